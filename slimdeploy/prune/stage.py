"""The prune stage as a command: load -> calibrate -> prune -> save (atomically) -> report."""

from __future__ import annotations

import json
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.load.checkpoint import copy_aux_files, save_model
from slimdeploy.load.data import calibration_data
from slimdeploy.load.model import load_model, require_tokenizer
from slimdeploy.prune.api import PruneConfig, prune
from slimdeploy.prune.record import PruneRecord, record_for
from slimdeploy.score.registry import get_criterion
from slimdeploy.utils.fs import atomic_dir, check_output, output_lock
from slimdeploy.utils.memory import peak_rss_mb


def needs_text(config: PruneConfig) -> bool:
    """Data-free criteria (random, l1, l2) prune without calibration text, so without a tokenizer, unless the
    layers are reconstructed afterwards."""
    return get_criterion(config.criterion).needs_data or "layer" in config.structures or config.reconstruct != "none"


def _calibration(tokenizer, config: PruneConfig, model_config, source: str, device) -> tuple:
    """(calibration batches on `device`, data fingerprint), or (None, None) for data-free criteria."""
    if not needs_text(config):
        return None, None
    require_tokenizer(tokenizer, f"{config.criterion} criterion's calibration", source)
    max_pos = getattr(model_config, "max_position_embeddings", None)
    if max_pos and config.seq_len > max_pos:
        raise SlimdeployError(
            f"seq_len {config.seq_len} exceeds the model's context of {max_pos} tokens; lower seq_len"
        )
    batches, data_fp = calibration_data(tokenizer, config.data, config.n_samples, config.seq_len, config.seed)
    return batches.to(device), data_fp


def prune_loaded(
    loaded, config: PruneConfig, progress=None, record: PruneRecord | None = None
) -> tuple[dict, PruneRecord]:
    """Calibrate and prune `loaded.model` in place; returns (report, record of what it now keeps)."""
    device = next(loaded.model.parameters()).device  # the model's device, whichever it is
    batches, data_fp = _calibration(loaded.tokenizer, config, loaded.model.config, loaded.source, device)
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
    sequential: bool | None = None,
) -> dict:
    """Load, calibrate, prune and save to `out` (whole or not at all). The weights stay in `dtype` (a bf16
    model is pruned in bf16; statistics and curvature accumulate in fp32/fp64) on `device`. `sequential`:
    one decoder layer in memory at a time, read from the folder's safetensors (prune/sequential.py)."""
    from slimdeploy.utils.device import check_dtype, resolve_device

    device = resolve_device(device)
    check_dtype(dtype)
    inputs = [model_spec, config.data]
    check_output(out, force, inputs)  # before any weight loads
    _check_input(model_spec, config)
    sequential = choose_sequential(model_spec, config, dtype, sequential)
    if sequential:
        from slimdeploy.prune.sequential import check_sequential

        check_sequential(config)
    with output_lock(out):  # a second run on the same --out fails now, not after the pruning
        if sequential:
            return _prune_sequential_locked(
                model_spec, config, out, inputs, force, trust_remote_code, progress, device, dtype
            )
        return _prune_locked(model_spec, config, out, inputs, force, trust_remote_code, progress, device, dtype)


def weight_bytes_on_load(model_spec, dtype: str, fetch: bool = True) -> int | None:
    """Bytes the weights take once loaded in `dtype` (from the safetensors headers; None: not a local folder)."""
    from slimdeploy.load.model import params_on_disk, resolve_source

    params = params_on_disk(model_spec, fetch)
    if not params:
        return None
    per = {"fp32": 4, "bf16": 2, "fp16": 2}.get(dtype)
    kind, location_ = resolve_source(model_spec, fetch)
    if per is None and kind == "zoo":
        per = 2  # the zoo's converted models are bf16
    if per is None:  # auto: the checkpoint's own dtype, i.e. the files' size
        location = Path(location_)
        return sum(f.stat().st_size for f in location.glob("*.safetensors"))
    return params * per


def choose_sequential(model_spec, config: PruneConfig, dtype: str, sequential: bool | None) -> bool:
    """`sequential` as asked; None: sequential when the in-memory prune would not fit in available memory.
    A prune that would not fit and cannot run sequentially is refused in one line, before any weight loads."""
    if sequential:
        return True
    from slimdeploy.utils.memory import available_bytes, prune_peak_estimate

    weights = weight_bytes_on_load(model_spec, dtype)
    if weights is None:
        return False
    need = prune_peak_estimate(weights, get_criterion(config.criterion).needs_grad)
    if config.reconstruct != "none":
        need += weights  # the dense copy reconstruction fits to
    have = available_bytes()
    if need <= have:
        return False
    gb = f"about {need / 2**30:.1f} GB in memory, {have / 2**30:.1f} GB available"
    if sequential is False:
        raise SlimdeployError(f"this prune needs {gb}; drop --no-sequential (one layer in memory at a time)")
    from slimdeploy.prune.sequential import check_sequential

    try:
        check_sequential(config)
    except SlimdeployError as exc:
        raise SlimdeployError(f"this prune needs {gb}, and it cannot run --sequential: {exc}") from None
    return True


def _check_input(model_spec, prune_config: PruneConfig) -> None:
    """Refuse, from config.json and before any weight loads, a quantized model (its weights are codes now) and,
    for global allocation, a family the DeciLM files that per-layer widths are saved in cannot carry."""
    from slimdeploy.load.decilm_format import check_representable
    from slimdeploy.load.model import source_config

    found = source_config(model_spec)
    if found is None:
        return
    location, config = found
    if config.get("quantization_config"):
        raise SlimdeployError(f"{location} is quantized; prune the unquantized model, then quantize the pruned one")
    if prune_config.allocation == "global":
        check_representable(config)


def _prune_locked(
    model_spec, config: PruneConfig, out: Path, inputs, force, trust_remote_code, progress, device, dtype
) -> dict:
    if config.data is not None and needs_text(config):
        from slimdeploy.load.data import load_texts

        load_texts(config.data, split="calibration")  # a missing or unreadable data file fails here, not later
    # the tokenizer travels into the output whether or not the criterion reads text: eval and export need it
    loaded = load_model(model_spec, dtype, trust_remote_code, device=device)
    report, record = prune_loaded(loaded, config, progress, record_for(loaded))  # a pruned input composes
    report["model"] = loaded.source
    report["device"], report["dtype"] = device, str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    with atomic_dir(out, force, inputs, what="prune") as tmp:
        save_model(loaded.model, loaded.tokenizer, tmp, record)
        copy_aux_files(loaded.source, tmp)  # chat template, generation config, licence the tokenizer did not write
        (tmp / "prune_report.json").write_text(json.dumps(report, indent=1))
    return report


def _prune_sequential_locked(
    model_spec, config: PruneConfig, out: Path, inputs, force, trust_remote_code, progress, device, dtype
) -> dict:
    from transformers import AutoConfig

    from slimdeploy.load.model import check_config, check_safetensors, load_tokenizer, resolve_source, torch_dtype
    from slimdeploy.prune.sequential import prune_sequential

    kind, location = resolve_source(model_spec)
    if kind not in ("dir", "demo"):
        raise SlimdeployError(
            f"sequential pruning reads a local model folder's safetensors layer by layer, and {location} is a "
            f"{kind} model; save it as a folder first (save_pretrained), or prune it without --sequential"
        )
    path = Path(location)
    check_config(path)
    check_safetensors(path)  # a truncated or corrupt shard fails here, not half-way through the layers
    from slimdeploy.utils.trust import remote_code_allowed

    if "slimdeploy_layer_widths" in (path / "config.json").read_text():
        raise SlimdeployError(
            f"{path} has per-layer widths (an earlier global prune); sequential pruning reads stock layers: "
            "prune it without --sequential"
        )
    trusted = remote_code_allowed(path, trust_remote_code)  # foreign code is refused without the flag
    model_config = AutoConfig.from_pretrained(path, trust_remote_code=trusted)
    work_dtype = torch_dtype(dtype)
    if work_dtype == "auto":  # the checkpoint's own dtype (fp32 when it names none)
        work_dtype = getattr(model_config, "dtype", None) or torch_dtype("fp32")
        work_dtype = torch_dtype(
            {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
                str(work_dtype).removeprefix("torch."), "fp32"
            )
        )
    tokenizer = load_tokenizer(location, trust_remote_code)  # checked now; its files are copied into the output
    batches, data_fp = _calibration(tokenizer, config, model_config, location, device)
    with atomic_dir(out, force, inputs, what="prune") as tmp:
        report, _ = prune_sequential(
            path,
            config,
            batches,
            tmp,
            device=device,
            dtype=work_dtype,
            trust_remote_code=trusted,
            progress=progress,
        )
        report |= {"calibration": data_fp, "config": config.model_dump(), "model": location, "device": device}
        report["dtype"] = str(work_dtype).removeprefix("torch.")
        (tmp / "prune_report.json").write_text(json.dumps(report, indent=1))
    return report
