"""One entry for every exporter, used by `slimdeploy export` and the recipe's export stage."""

from __future__ import annotations

from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.feasibility import FORMATS, check_exportable, read_config
from slimdeploy.utils.fs import check_output, output_lock


def run_export(model_dir: Path, out: Path, format: str, dtype: str, tp_size: int, verify: bool, force: bool) -> dict:
    """Refuse what the format cannot represent before anything loads, then hand over to the exporter."""
    if format not in FORMATS:
        raise SlimdeployError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if tp_size < 1:
        raise SlimdeployError(f"--tp-size {tp_size}: give a tensor-parallel size of 1 or more")
    check_output(out, force, [model_dir])
    check_exportable(read_config(model_dir), format, dtype, verify)
    with output_lock(out):  # a second export to the same place fails now, before loading
        return _export(model_dir, out, format, dtype, tp_size, verify, force)


def _export(model_dir: Path, out: Path, format: str, dtype: str, tp_size: int, verify: bool, force: bool) -> dict:
    if format == "vllm":
        from slimdeploy.export.vllm import export_vllm

        return export_vllm(model_dir, out, tp_size, verify=verify, force=force)
    if format == "onnx":
        from slimdeploy.export.onnx import export_onnx

        return export_onnx(model_dir, out, dtype, verify=verify, force=force)
    from slimdeploy.export.ort_genai import export_ort_genai

    return export_ort_genai(model_dir, out, dtype, verify=verify, force=force, tp_size=tp_size)
