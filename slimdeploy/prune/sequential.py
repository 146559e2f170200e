"""Sequential pruning for models larger than memory: one decoder layer on the device at a time.

    pass 1 (score): for each layer: onload it, run the calibration activations through it (they become the
        next layer's inputs), gather its input statistics, score its groups, keep only the scores; offload it.
    plan: the in-memory path's own `make_plan` on all the scores (global allocation needs every layer's
        scores before any slicing: scores are kept, not layers).
    pass 2 (apply): for each layer: onload it, with the OBS update run the activations through it again to
        rebuild its covariances, update, slice, write its tensors to its own shard; offload it.

Peak memory: embeddings + LM head, one layer with its fp32 covariances, and the calibration activations in
and out: independent of depth. Activations propagate through the dense layers, as the in-memory path
scores the dense model, so both paths give the same pruned weights (tests/test_sequential.py).
Criteria that need a backward pass through the whole model (taylor, loraprune, surgeon's output-gradient
factor) cannot run this way; `surgeon_layerwise` is the Surgeon's costs and update with G = I.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from slimdeploy.analyze.adapters import decoder_layers, family_of, layer_layout, linears
from slimdeploy.analyze.slicing import drop_layers
from slimdeploy.errors import SlimdeployError
from slimdeploy.load.checkpoint import copy_aux_files
from slimdeploy.load.decilm_format import write_decilm_in_place
from slimdeploy.load.onload import (
    WeightIndex,
    layer_prefixes,
    offload_layer,
    offload_rest,
    onload_layer,
    onload_rest,
    rest_names,
    skeleton,
)
from slimdeploy.prune.api import make_budget, obs_update_layer, prune_report, resolve_update
from slimdeploy.prune.apply import slice_layer, sync_config
from slimdeploy.prune.config import PruneConfig
from slimdeploy.prune.plan import make_plan, standardize_per_layer
from slimdeploy.prune.record import PruneRecord
from slimdeploy.score.api import ScoreInputs, random_criterion
from slimdeploy.score.registry import get_criterion
from slimdeploy.score.stats import catch_layer0_inputs, layer_input_stats
from slimdeploy.utils.memory import peak_rss_mb


def check_sequential(config: PruneConfig) -> None:
    """Refuse what cannot run one layer at a time, before any weight is read."""
    spec = get_criterion(config.criterion)
    if spec.needs_grad:
        raise SlimdeployError(
            f"criterion {config.criterion} needs a backward pass through the whole model, which sequential "
            "pruning never holds; use surgeon_layerwise (the Surgeon's costs and update, layer-wise curvature), "
            "wanda, flap, l1 or l2"
        )
    if config.shots != 1:
        raise SlimdeployError("sequential pruning runs one shot; set shots to 1")
    if config.reconstruct != "none":
        raise SlimdeployError(
            "reconstruct keeps a dense copy of the model in memory, which sequential pruning never holds; "
            "set reconstruct: none, or prune in memory"
        )
    resolve_update(config)


def _trim() -> None:
    """Hand freed heap memory back to the OS between layers (glibc keeps freed medium-sized blocks, which
    after two passes over a deep model adds up); a no-op elsewhere."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc (musl): nothing to trim
            pass


def _last_use(st) -> None:
    """These statistics are dropped after this use: A_inv may free each covariance sum once inverted."""
    for inp in st.inputs.values():
        inp.keep_cov = False


def _layer_scores(config: PruneConfig, layer, st) -> dict[str, torch.Tensor]:
    """One layer's group scores, from the criterion's own function given only that layer."""
    _last_use(st)
    inp = ScoreInputs(None, None, config.seed + 1, [layer_layout(layer)], [linears(layer)], stats=[st])
    (scores,) = get_criterion(config.criterion).function()(inp)
    for kind, v in scores.items():
        if not torch.isfinite(v).all():
            raise SlimdeployError(f"criterion {config.criterion} gave non-finite scores ({kind})")
    return scores


def _all_finite(t: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """isfinite a slice at a time: on a whole 1 GB bf16 embedding its temporaries cost 1.5 GB (measured)."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def _write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """One safetensors file; refuses NaN/Inf (in the source, or made by the update), naming the tensor."""
    from safetensors.torch import save_file

    for name, t in tensors.items():
        if t.is_floating_point() and not _all_finite(t):
            raise SlimdeployError(f"weight {name} contains NaN or Inf after pruning; check the source model")

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    return {k: path.name for k in tensors}


def _layer0_inputs(model, index: WeightIndex, batches: torch.Tensor | None, device: str, dtype) -> tuple[list, dict]:
    """The calibration activations entering layer 0; embeddings and head are read for it and freed after."""
    if batches is None:
        return [], {}
    onload_rest(model, index, device, dtype)
    try:
        return catch_layer0_inputs(model, batches.to(device))
    finally:
        offload_rest(model)


def prune_sequential(
    model_dir: Path,
    config: PruneConfig,
    batches: torch.Tensor | None,
    out_dir: Path,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    progress=None,
) -> tuple[dict, PruneRecord]:
    """Prune the model in `model_dir` layer by layer into the (existing, empty) folder `out_dir`."""
    check_sequential(config)
    if batches is None and get_criterion(config.criterion).needs_data:
        raise SlimdeployError(f"criterion {config.criterion!r} needs calibration data")
    t0 = time.perf_counter()
    model, index = skeleton(model_dir, dtype, device, trust_remote_code)
    family_of(model)
    prefixes = layer_prefixes(model)
    layers = decoder_layers(model)
    n = len(layers)
    kinds: set[str] = set(config.structures)
    update = resolve_update(config)
    budget = make_budget(model)  # shapes only: meta layers count their parameters like real ones
    p0 = budget.total_params
    record = PruneRecord.load(model_dir) or PruneRecord.initial(model)  # a pruned input composes
    hidden, kwargs = _layer0_inputs(model, index, batches, device, dtype)
    layer_seconds = [0.0] * n

    # pass 1: scores (and block influence), one layer at a time
    per_layer, influence = [], []
    layer_scores = None
    if config.criterion == "random":  # one generator across all layers: drawn from the shapes, nothing read
        inp = ScoreInputs(None, None, config.seed + 1, [layer_layout(ly) for ly in layers], [])
        per_layer, layer_scores = random_criterion(inp), inp.layer_scores
    else:
        for li, layer in enumerate(layers):
            t_layer = time.perf_counter()
            onload_layer(layer, prefixes[li], index, device, dtype)
            st = layer_input_stats(layer, hidden, kwargs, with_cov=config.criterion == "surgeon_layerwise")
            influence.append(st.block_influence)
            per_layer.append(_layer_scores(config, layer, st))
            del st
            offload_layer(layer)
            _trim()
            layer_seconds[li] += time.perf_counter() - t_layer
            if progress:
                progress(li + 1, 2 * n)
        if batches is not None and "layer" in kinds:  # depth: block influence (ShortGPT), as score() gives
            layer_scores = torch.tensor(influence, dtype=torch.float64)
    if config.allocation == "global" and get_criterion(config.criterion).standardize_global:
        per_layer = standardize_per_layer(per_layer)
    plan = make_plan(per_layer, budget, config.ratio, kinds, config=config, layer_scores=layer_scores)
    record = record.after(plan)

    # pass 2: update, slice, write; activations again only when the update needs covariances
    hidden = [] if update == "none" else _layer0_inputs(model, index, batches, device, dtype)[0]
    keep = plan.layers_keep if plan.layers_keep is not None else list(range(n))
    rest = rest_names(model, index)  # embeddings, final norm, LM head: one shard each, after the layers
    n_shards = len(keep) + len(rest)
    weight_map: dict[str, str] = {}
    for li, (layer, lp) in enumerate(zip(layers, plan.layers)):
        if li not in keep and update == "none":
            if progress:
                progress(n + li + 1, 2 * n)
            continue
        t_layer = time.perf_counter()
        onload_layer(layer, prefixes[li], index, device, dtype)
        if update != "none":
            st = layer_input_stats(layer, hidden, kwargs, with_cov=True)  # outputs of the dense layer
            _last_use(st)
            if lp is not None:
                obs_update_layer(layer, lp, st, update)
            del st
        if lp is not None:
            slice_layer(layer, lp)
        if li in keep:
            new_i = keep.index(li)
            tensors = {f"{prefixes[new_i]}{k}": v for k, v in layer.state_dict().items()}
            weight_map |= _write_shard(out_dir / f"model-{new_i + 1:05d}-of-{n_shards:05d}.safetensors", tensors)
        offload_layer(layer)
        _trim()
        layer_seconds[li] += time.perf_counter() - t_layer
        if progress:
            progress(n + li + 1, 2 * n)
    del hidden
    if plan.layers_keep is not None:
        drop_layers(model, plan.layers_keep)
    uniform = sync_config(model)
    # embeddings, final norm, LM head: untouched by structured pruning, copied from the source in `dtype`,
    # one tensor (and one shard) at a time: a 128k-vocabulary embedding is 1 GB in bf16
    for j, name in enumerate(rest, start=len(keep) + 1):
        tensor = {name: index.read([name])[name].to(dtype)}
        weight_map |= _write_shard(out_dir / f"model-{j:05d}-of-{n_shards:05d}.safetensors", tensor)
        del tensor
    p1 = sum(p.numel() for p in model.parameters())
    if p1 != plan.predicted_params:
        raise AssertionError(f"plan predicted {plan.predicted_params} parameters, slicing left {p1}")
    model.config.dtype = dtype
    model.config.save_pretrained(out_dir)
    total_bytes = sum((out_dir / f).stat().st_size for f in set(weight_map.values()))
    (out_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}, indent=1)
    )
    if not uniform:  # per-layer widths: the DeciLM files stock transformers loads (one shard at a time)
        write_decilm_in_place(out_dir)
    copy_aux_files(model_dir, out_dir)
    record.save(out_dir)
    report = prune_report(model, p0, config, update, [{"shot": 1, "params": p1}], t0)
    report |= {
        "sequential": True,
        "seconds_per_layer": round(sum(layer_seconds) / n, 3),  # both passes, reading and writing included
        "layer_seconds": [round(x, 3) for x in layer_seconds],
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return report, record
