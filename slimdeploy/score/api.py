"""score(): model + calibration batches + criterion -> a score per group (per layer and kind) and per layer.

Layer scores (for depth pruning) are the block influence of each layer (ShortGPT), from the layer-wise
activation pass, for every criterion except `random`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimdeploy.analyze.adapters import decoder_layers, layer_layout, linears
from slimdeploy.analyze.groups import COLS, members
from slimdeploy.errors import SlimdeployError
from slimdeploy.score import criteria, surgeon
from slimdeploy.score.names import CRITERIA, NEEDS_DATA  # noqa: E402,F401  (one list, torch-free)
from slimdeploy.score.stats import gradient_stats, layerwise_input_stats

GROUP_KINDS = ("mlp", "head", "kv")


@dataclass
class GroupScores:
    per_layer: list[dict[str, torch.Tensor]]  # layer -> kind -> (n_groups,)
    layer: torch.Tensor | None  # (n_layers,) importance of whole layers
    criterion: str
    stats: list | None = None  # kept for the Surgeon's weight update


def _check(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise SlimdeployError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


def _aggregate(lay, element_map) -> dict[str, torch.Tensor]:
    """Group scores from a per-projection element map: sum over each group's rows/columns."""
    out = {}
    for kind in GROUP_KINDS:
        total = None
        for mem in members(kind, lay):
            s = criteria.block_sums(element_map(mem.linear), mem.blocks, mem.axis).double()
            total = s if total is None else total + s
        out[kind] = total
    return out


def _surgeon_layer(lay, lin: dict, st) -> dict[str, torch.Tensor]:
    inv_cache: dict = {}

    def inv(key, M):
        if key not in inv_cache:
            inv_cache[key] = surgeon.damped_inverse(M)
        return inv_cache[key]

    out = {}
    for kind in GROUP_KINDS:
        total = None
        for mem in members(kind, lay):
            W = lin[mem.linear].weight.detach()
            A, G = st.inputs[mem.linear].A, st.out_grads[mem.linear].A
            if mem.axis == COLS:
                s = surgeon.column_costs(W, inv(("A", mem.linear), A), G, mem.blocks)
            else:
                s = surgeon.row_costs(W, A, inv(("G", mem.linear), G), mem.blocks)
            total = s if total is None else total + s
        out[kind] = total
    return out


def score(
    model, criterion: str, batches: torch.Tensor | None, seed: int = 0, need_layers: bool = False, progress=None
) -> GroupScores:
    """Score every group of every decoder layer of `model` with `criterion`."""
    _check(criterion)
    if criterion in NEEDS_DATA and batches is None:
        raise SlimdeployError(f"criterion {criterion!r} needs calibration data")
    layers = decoder_layers(model)
    layouts = [layer_layout(layer) for layer in layers]
    lins = [linears(layer) for layer in layers]
    layer_scores, stats = None, None
    if criterion == "random":
        g = torch.Generator().manual_seed(seed)
        per_layer = [
            {
                "mlp": criteria.random_scores(lay.intermediate, g),
                "head": criteria.random_scores(lay.heads, g),
                "kv": criteria.random_scores(lay.kv_heads, g),
            }
            for lay in layouts
        ]
        layer_scores = criteria.random_scores(len(layers), g)
        return GroupScores(per_layer, layer_scores, criterion)
    if batches is not None and (criterion in ("wanda", "flap") or need_layers):
        stats = layerwise_input_stats(model, batches, progress=progress)
        layer_scores = torch.tensor([s.block_influence for s in stats], dtype=torch.float64)
    if criterion in ("l1", "l2"):
        p = 1 if criterion == "l1" else 2
        per_layer = [
            _aggregate(lay, lambda n, li=li: criteria.magnitude_map(lins[li][n].weight.detach().float(), p))
            for li, lay in enumerate(layouts)
        ]
    elif criterion == "wanda":
        per_layer = [
            _aggregate(
                lay, lambda n, li=li: criteria.wanda_map(lins[li][n].weight.detach().float(), stats[li].inputs[n].norm)
            )
            for li, lay in enumerate(layouts)
        ]
    elif criterion == "flap":
        per_layer = [
            _aggregate(
                lay,
                lambda n, li=li: criteria.flap_map(
                    lins[li][n].weight.detach().float(), stats[li].inputs[n].var, n in criteria.CONSUMERS
                ),
            )
            for li, lay in enumerate(layouts)
        ]
    elif criterion == "taylor":
        gstats = gradient_stats(model, batches, kfac=False, weight_grads=True, progress=progress)
        per_layer = [
            _aggregate(
                lay,
                lambda n, li=li: criteria.taylor_map(
                    lins[li][n].weight.detach().float(), gstats[li].weight_grads[n].float()
                ),
            )
            for li, lay in enumerate(layouts)
        ]
    elif criterion == "loraprune":
        from slimdeploy.score.loraprune import loraprune_maps

        maps = loraprune_maps(model, batches, seed=seed, progress=progress)
        per_layer = [_aggregate(lay, lambda n, li=li: maps[li][n]) for li, lay in enumerate(layouts)]
    else:  # surgeon
        stats = gradient_stats(model, batches, kfac=True, progress=progress)
        per_layer = [_surgeon_layer(lay, lins[li], stats[li]) for li, lay in enumerate(layouts)]
    for li, s in enumerate(per_layer):
        for kind, v in s.items():
            if not torch.isfinite(v).all():
                raise SlimdeployError(f"criterion {criterion} gave non-finite scores in layer {li} ({kind})")
    return GroupScores(per_layer, layer_scores, criterion, stats)
