"""The prune stage as a command: load -> calibrate -> prune -> save (atomically) -> report."""

from __future__ import annotations

import json
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.load.checkpoint import save_model
from slimdeploy.load.data import calibration_data
from slimdeploy.load.model import load_model, require_tokenizer
from slimdeploy.prune.api import PruneConfig, prune
from slimdeploy.prune.record import PruneRecord, record_for
from slimdeploy.score.registry import get_criterion
from slimdeploy.utils.fs import atomic_dir, check_output, output_lock
from slimdeploy.utils.memory import peak_rss_mb


def needs_text(config: PruneConfig) -> bool:
    """Data-free criteria (random, l1, l2) prune without calibration text, so without a tokenizer."""
    return get_criterion(config.criterion).needs_data or "layer" in config.structures


def prune_loaded(
    loaded, config: PruneConfig, progress=None, record: PruneRecord | None = None
) -> tuple[dict, PruneRecord]:
    """Calibrate and prune `loaded.model` in place; returns (report, record of what it now keeps)."""
    batches, data_fp = None, None
    if needs_text(config):
        require_tokenizer(loaded.tokenizer, f"{config.criterion} criterion's calibration", loaded.source)
        max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
        if max_pos and config.seq_len > max_pos:
            raise SlimdeployError(
                f"seq_len {config.seq_len} exceeds the model's context of {max_pos} tokens; lower seq_len"
            )
        batches, data_fp = calibration_data(
            loaded.tokenizer, config.data, config.n_samples, config.seq_len, config.seed
        )
        batches = batches.to(next(loaded.model.parameters()).device)  # the model's device, whichever it is
    report, record = prune(loaded.model, config, batches, progress=progress, record=record)
    report["calibration"] = data_fp
    report["config"] = config.model_dump()
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return report, record


def prune_to_dir(
    model_spec: str | None,
    config: PruneConfig,
    out: Path,
    force: bool = False,
    trust_remote_code: bool = False,
    progress=None,
    device: str = "cpu",
    dtype: str = "fp32",
) -> dict:
    """Load, calibrate, prune and save to `out` (whole or not at all). The weights stay in `dtype` (a bf16
    model is pruned in bf16; statistics and curvature accumulate in fp32/fp64) on `device`."""
    from slimdeploy.utils.device import check_dtype, resolve_device

    device = resolve_device(device)
    check_dtype(dtype)
    inputs = [model_spec, config.data]
    check_output(out, force, inputs)  # before any weight loads
    with output_lock(out):  # a second run on the same --out fails now, not after the pruning
        return _prune_locked(model_spec, config, out, inputs, force, trust_remote_code, progress, device, dtype)


def _prune_locked(
    model_spec, config: PruneConfig, out: Path, inputs, force, trust_remote_code, progress, device, dtype
) -> dict:
    if config.data is not None and needs_text(config):
        from slimdeploy.load.data import load_texts

        load_texts(config.data, split="calibration")  # a missing or unreadable data file fails here, not later
    loaded = load_model(model_spec, dtype, trust_remote_code, with_tokenizer=needs_text(config), device=device)
    report, record = prune_loaded(loaded, config, progress, record_for(loaded))  # a pruned input composes
    report["model"] = loaded.source
    report["device"], report["dtype"] = device, str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    with atomic_dir(out, force, inputs, what="prune") as tmp:
        save_model(loaded.model, loaded.tokenizer, tmp, record)
        (tmp / "prune_report.json").write_text(json.dumps(report, indent=1))
    return report
