"""One entry for every exporter, used by `slimdeploy export` and the recipe's export stage."""

from __future__ import annotations

from pathlib import Path


def run_export(model_dir: Path, out: Path, format: str, dtype: str, tp_size: int, verify: bool, force: bool) -> dict:
    """One entry for every exporter (the CLI and the recipe's export stage)."""
    if format == "vllm":
        from slimdeploy.export.vllm import export_vllm

        return export_vllm(model_dir, out, tp_size, verify=verify, force=force)
    if format == "onnx":
        from slimdeploy.export.onnx import export_onnx

        return export_onnx(model_dir, out, dtype, verify=verify, force=force)
    from slimdeploy.export.ort_genai import export_ort_genai

    return export_ort_genai(model_dir, out, dtype, verify=verify, force=force, tp_size=tp_size)
