"""run_export: the one entry to every registered exporter (export/registry.py), for the CLI and the recipe."""

from __future__ import annotations

from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.feasibility import check_exportable, read_config
from slimdeploy.export.registry import get_exporter
from slimdeploy.utils.fs import check_output, output_lock


def run_export(model_dir: Path, out: Path, format: str, dtype: str, tp_size: int, verify: bool, force: bool) -> dict:
    """Refuse what the format cannot represent before anything loads, then hand over to the exporter."""
    exporter = get_exporter(format)
    if tp_size < 1:
        raise SlimdeployError(f"--tp-size {tp_size}: give a tensor-parallel size of 1 or more")
    check_output(out, force, [model_dir])
    from slimdeploy.load.model import has_tokenizer_files

    if Path(model_dir).is_dir() and not has_tokenizer_files(Path(model_dir)):
        raise SlimdeployError(
            f"{model_dir} has no tokenizer files: an export without them can be neither served nor verified; "
            "copy tokenizer.json / tokenizer_config.json from the source model into it"
        )
    check_exportable(read_config(model_dir), format, dtype, verify)
    with output_lock(out):  # a second export to the same place fails now, before loading
        return exporter.export(model_dir, out, dtype=dtype, tp_size=tp_size, verify=verify, force=force)
