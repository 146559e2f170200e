"""The prune stage as a command: load -> calibrate -> prune -> save (atomically) -> report."""

from __future__ import annotations

import json
import resource
from pathlib import Path

from slimdeploy.load.data import calibration_data
from slimdeploy.load.model import load_model
from slimdeploy.prune.api import PruneConfig, prune
from slimdeploy.prune.io import atomic_dir, save_model
from slimdeploy.score.api import NEEDS_DATA


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prune_loaded(loaded, config: PruneConfig, progress=None) -> dict:
    batches, data_fp = None, None
    if config.criterion in NEEDS_DATA or "layer" in config.structures:
        batches, data_fp = calibration_data(
            loaded.tokenizer, config.data, config.n_samples, config.seq_len, config.seed
        )
    report = prune(loaded.model, config, batches, progress=progress)
    report["calibration"] = data_fp
    report["config"] = config.model_dump()
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return report


def prune_to_dir(
    model_spec: str | None,
    config: PruneConfig,
    out: Path,
    force: bool = False,
    trust_remote_code: bool = False,
    progress=None,
) -> dict:
    loaded = load_model(model_spec, "fp32", trust_remote_code)
    report = prune_loaded(loaded, config, progress)
    report["model"] = loaded.source
    with atomic_dir(out, force) as tmp:
        save_model(loaded.model, loaded.tokenizer, tmp)
        (tmp / "prune_report.json").write_text(json.dumps(report, indent=1))
    return report
