"""prune(model, config, batches): score -> allocate -> (Surgeon update) -> slice, in `shots` steps."""

from __future__ import annotations

import time

import torch

from slimdeploy.analyze.adapters import decoder_layers, family_of, layer_layout, linears
from slimdeploy.analyze.groups import layer_params
from slimdeploy.errors import SlimdeployError
from slimdeploy.prune.apply import apply_plan, current_widths
from slimdeploy.prune.config import PruneConfig, Structure  # noqa: F401  (re-exported)
from slimdeploy.prune.plan import Budget, LayerPlan, PrunePlan, make_plan, standardize_per_layer
from slimdeploy.prune.record import PruneRecord
from slimdeploy.score import surgeon
from slimdeploy.score.api import score
from slimdeploy.score.registry import get_criterion

CURVATURE = ("surgeon", "surgeon_layerwise")  # criteria that gather the covariances the OBS update needs


def make_budget(model) -> Budget:
    layers = decoder_layers(model)
    return Budget(
        total_params=sum(p.numel() for p in model.parameters()),
        hidden=model.config.hidden_size,
        layouts=[layer_layout(layer) for layer in layers],
        layer_params=[layer_params(layer) for layer in layers],
        qkv_bias=layers[0].self_attn.q_proj.bias is not None,
    )


def _complement(n: int, keep: torch.Tensor | None) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    if keep is None:  # that structure is left whole: nothing removed
        return mask.logical_not().nonzero().flatten()
    mask[keep] = False
    return mask.nonzero().flatten()


def obs_update(model, plan: PrunePlan, stats, mode: str) -> None:
    """Before slicing, let the remaining weights absorb the removed groups (The LLM Surgeon's update)."""
    for li, (layer, lp) in enumerate(zip(decoder_layers(model), plan.layers)):
        if lp is not None:
            obs_update_layer(layer, lp, stats[li], mode)


def obs_update_layer(layer, lp: LayerPlan, st, mode: str) -> None:
    """One layer's update: consumer columns (o, down) from A; with `both`, producer rows from G too."""
    lay, lin = layer_layout(layer), linears(layer)
    hd = lay.head_dim
    removed_mlp = _complement(lay.intermediate, lp.mlp_keep)
    removed_heads = _complement(lay.heads, lp.heads_keep)
    removed_q = (removed_heads[:, None] * hd + torch.arange(hd)).flatten()
    with torch.no_grad():
        for name, removed in (("down", removed_mlp), ("o", removed_q)):
            A_inv = st.inputs[name].A_inv().to(lin[name].weight.device)
            lin[name].weight.copy_(surgeon.remove_columns_update(lin[name].weight, A_inv, removed.to(A_inv.device)))
        if mode == "both" and st.out_grads:
            removed_kv = _complement(lay.kv_heads, lp.kv_keep)
            removed_kvrows = (removed_kv[:, None] * hd + torch.arange(hd)).flatten()
            for name, removed in (
                ("gate", removed_mlp),
                ("up", removed_mlp),
                ("q", removed_q),
                ("k", removed_kvrows),
                ("v", removed_kvrows),
            ):
                G_inv = surgeon.damped_inverse(st.out_grads[name].A)
                lin[name].weight.copy_(surgeon.remove_rows_update(lin[name].weight, G_inv, removed))


def resolve_update(config: PruneConfig) -> str:
    """The OBS update mode `config` asks for, refused where the criterion has no curvature for it."""
    curvature = config.criterion in CURVATURE
    update = config.update if config.update != "auto" else ("cols" if curvature else "none")
    if update != "none" and not curvature:
        raise SlimdeployError("the OBS weight update needs curvature: use it with criterion surgeon")
    if update == "both" and config.criterion == "surgeon_layerwise":
        raise SlimdeployError(
            "update both needs output-gradient curvature, which surgeon_layerwise does not gather; "
            "use update cols, or criterion surgeon"
        )
    kinds = set(config.structures)
    if update != "none" and kinds & {"mlp", "head", "kv"} and "layer" in kinds:
        raise SlimdeployError("the Surgeon update cannot be combined with layer dropping in one shot")
    return update


def prune_report(model, p0: int, config: PruneConfig, update: str, shots: list[dict], t0: float) -> dict:
    """What prune (in memory or sequential) reports; refuses a run that removed nothing."""
    p1 = sum(p.numel() for p in model.parameters())
    if p1 == p0:
        raise SlimdeployError("pruning removed nothing; raise the ratio or add structures")
    return {
        "params_before": p0,
        "params_after": p1,
        "removed_fraction": 1 - p1 / p0,
        "criterion": config.criterion,
        "update": update,
        "shots": shots,
        "widths": current_widths(model),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def prune(
    model, config: PruneConfig, batches: torch.Tensor | None, progress=None, record: PruneRecord | None = None
) -> tuple[dict, PruneRecord]:
    """Prune `model` in place to about (1 - ratio) of its parameters; returns (report of what was done, the
    PruneRecord of what the model keeps relative to the original; `record`: the one it had, if pruned before)."""
    family_of(model)  # refuses unsupported architectures before any work
    t0 = time.perf_counter()
    p0 = sum(p.numel() for p in model.parameters())
    record = record or PruneRecord.initial(model)
    kinds: set[str] = set(config.structures)
    update = resolve_update(config)
    dense = _dense_copy(model, config, batches)
    shots = []
    for shot in range(1, config.shots + 1):
        goal = p0 * (1 - config.ratio * shot / config.shots)  # parameters left after this shot
        budget = make_budget(model)
        ratio_now = 1 - goal / budget.total_params
        if ratio_now <= 0.001:
            continue
        scores = score(
            model, config.criterion, batches, seed=config.seed + shot, need_layers="layer" in kinds, progress=progress
        )
        per_layer = scores.per_layer
        if config.allocation == "global" and get_criterion(config.criterion).standardize_global:
            per_layer = standardize_per_layer(per_layer)
        plan = make_plan(per_layer, budget, ratio_now, kinds, config=config, layer_scores=scores.layer)
        if update != "none":
            obs_update(model, plan, scores.stats, update)
        record = apply_plan(model, plan, record)
        after = sum(p.numel() for p in model.parameters())
        if after != plan.predicted_params:
            raise AssertionError(f"plan predicted {plan.predicted_params} parameters, slicing left {after}")
        shots.append({"shot": shot, "params": after})
    rebuilt = None
    if dense is not None and batches is not None:  # _dense_copy refused reconstruct without batches
        rebuilt = reconstruct_shot(model, dense, batches, config, progress)
    report = prune_report(model, p0, config, update, shots, t0)
    if rebuilt is not None:
        report["reconstruct"] = rebuilt
    return report, record


def _dense_copy(model, config: PruneConfig, batches):
    """The unpruned model reconstruction fits to (a copy: one more model in memory), or None."""
    if config.reconstruct == "none":
        return None
    if batches is None:
        raise SlimdeployError("reconstruct needs calibration text; give prune data or set reconstruct: none")
    import copy

    return copy.deepcopy(model).eval()


def reconstruct_shot(model, dense, batches: torch.Tensor, config: PruneConfig, progress=None) -> dict:
    """Reconstruct once, after the last shot; returns the mean layer output error before and after (dense
    layer on the same inputs), so the report says what it bought."""
    from slimdeploy.prune.reconstruct import reconstruct

    t = time.perf_counter()
    rows = reconstruct(
        model,
        dense,
        batches,
        config.reconstruct,
        config.reconstruct_target,
        steps=config.reconstruct_steps,
        lr=config.reconstruct_lr,
        seed=config.seed,
        progress=progress,
    )
    n = len(rows)
    return {
        "method": config.reconstruct,
        "target": config.reconstruct_target,
        "layer_mse_before": sum(r["mse_before"] for r in rows) / n,
        "layer_mse_after": sum(r["mse_after"] for r in rows) / n,
        "seconds": round(time.perf_counter() - t, 2),
    }
