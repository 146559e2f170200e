"""The quantize stage as a command: check -> load -> calibrate -> quantize -> write (atomically) -> report."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.quantize.config import QuantizeConfig
from slimdeploy.utils.fs import atomic_dir, check_output, output_lock
from slimdeploy.utils.memory import peak_rss_mb


def check_quantizable(model_spec: str | None) -> None:
    """Refuse, from config.json alone, what this stage cannot quantize or write."""
    from slimdeploy.load.model import source_config

    found = source_config(model_spec)
    if found is None:
        return
    location, config = found
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
        raise SlimdeployError(f"{location} is already quantized ({method}); quantize the unquantized model instead")
    if "slimdeploy_layer_widths" in config:
        raise SlimdeployError(
            f"{location} has per-layer widths (allocation global, stored as DeciLM files), which this stage does "
            "not quantize yet; prune with allocation uniform to quantize the result"
        )


def _source_dtype(source: Path):
    """The dtype the source checkpoint stores (fp32 when it names none)."""
    import torch

    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return torch.float32
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def quantize_to_dir(
    model_spec: str | None,
    cfg: QuantizeConfig,
    out: Path,
    force: bool = False,
    trust_remote_code: bool = False,
    progress=None,
    device: str = "cpu",
) -> dict:
    """Quantize a model folder into a compressed-tensors checkpoint at `out` (whole or not at all)."""
    from slimdeploy.utils.device import resolve_device

    device = resolve_device(device)
    check_output(out, force, [model_spec, cfg.data])
    check_quantizable(model_spec)
    with output_lock(out):
        return _quantize_locked(model_spec, cfg, out, force, trust_remote_code, progress, device)


def _quantize_locked(model_spec, cfg: QuantizeConfig, out: Path, force, trust_remote_code, progress, device) -> dict:
    from slimdeploy.load.checkpoint import copy_aux_files
    from slimdeploy.load.data import calibration_data
    from slimdeploy.load.model import load_model, require_tokenizer, safetensors_params
    from slimdeploy.quantize.apply import quantize_model, write_checkpoint

    t0 = time.perf_counter()
    loaded = load_model(model_spec, "fp32", trust_remote_code, device=device)
    batches, data_fp = None, None
    if cfg.method == "gptq":
        require_tokenizer(loaded.tokenizer, "GPTQ calibration", loaded.source)
        max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
        if max_pos and cfg.seq_len > max_pos:
            raise SlimdeployError(f"seq_len {cfg.seq_len} exceeds the model's context of {max_pos}; lower seq_len")
        batches, data_fp = calibration_data(loaded.tokenizer, cfg.data, cfg.n_samples, cfg.seq_len, cfg.seed)
    scales, details = quantize_model(loaded.model, cfg, batches, progress)
    source = Path(loaded.source)
    report = {
        "model": loaded.source,
        "config": cfg.model_dump(),
        "scheme": {"weights": f"int{cfg.bits}", "group_size": cfg.groups, "format": cfg.format},
        "quantized_modules": len(scales),
        "calibration": data_fp,
        **details,
    }
    with atomic_dir(out, force, [model_spec, cfg.data], what="quantize") as tmp:
        write_checkpoint(loaded.model, scales, cfg, tmp, _source_dtype(source))
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        copy_aux_files(source, tmp)
        if (source / "pruning.json").is_file():  # a pruned-then-quantized model keeps its record
            shutil.copy2(source / "pruning.json", tmp / "pruning.json")
        bytes_before = sum(f.stat().st_size for f in source.glob("*.safetensors")) if source.is_dir() else None
        report |= {
            "weight_file_bytes": {
                "before": bytes_before,
                "after": sum(f.stat().st_size for f in tmp.glob("*.safetensors")),
            },
            "params_on_disk": safetensors_params(tmp),
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        (tmp / "quantize_report.json").write_text(json.dumps(report, indent=1))
    return report
