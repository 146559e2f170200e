"""score(): model + calibration batches + criterion -> a score per group (per layer and kind) and per layer.

Layer scores (for depth pruning) are the block influence of each layer (ShortGPT), from the layer-wise
activation pass, for every criterion except `random`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from slimdeploy.analyze.adapters import decoder_layers, layer_layout, linears
from slimdeploy.analyze.groups import COLS, members
from slimdeploy.errors import SlimdeployError
from slimdeploy.score import criteria, surgeon
from slimdeploy.score.registry import get_criterion
from slimdeploy.score.stats import gradient_stats, layerwise_input_stats

GROUP_KINDS = ("mlp", "head", "kv")


@dataclass
class GroupScores:
    per_layer: list[dict[str, torch.Tensor]]  # layer -> kind -> (n_groups,)
    layer: torch.Tensor | None  # (n_layers,) importance of whole layers
    criterion: str
    stats: list | None = None  # kept for the Surgeon's weight update


def _aggregate(lay, element_map) -> dict[str, torch.Tensor]:
    """Group scores from a per-projection element map: sum over each group's rows/columns."""
    out = {}
    for kind in GROUP_KINDS:
        parts = [criteria.block_sums(element_map(m.linear), m.blocks, m.axis).double() for m in members(kind, lay)]
        out[kind] = _sum(parts)
    return out


def _sum(parts: list[torch.Tensor]) -> torch.Tensor:
    total = parts[0]
    for s in parts[1:]:  # left to right, as the groups' members are listed
        total = total + s
    return total


def _surgeon_layer(lay, lin: dict, st, layerwise: bool = False) -> dict[str, torch.Tensor]:
    """OBS group costs of one layer; `layerwise`: output-gradient factor G = identity (no backward pass)."""
    inv_cache: dict = {}

    def inv(key, M):
        if key not in inv_cache:
            inv_cache[key] = surgeon.damped_inverse(M)
        return inv_cache[key]

    out = {}
    for kind in GROUP_KINDS:
        parts = []
        for mem in members(kind, lay):
            W = lin[mem.linear].weight.detach()
            a = st.inputs[mem.linear]
            G = None if layerwise else st.out_grads[mem.linear].A
            if mem.axis == COLS:
                if ("A", mem.linear) not in inv_cache:
                    inv_cache[("A", mem.linear)] = a.A_inv()
                s = surgeon.column_costs(W, inv_cache[("A", mem.linear)], G, mem.blocks)
            else:
                s = surgeon.row_costs(W, a.A, None if G is None else inv(("G", mem.linear), G), mem.blocks)
            parts.append(s)
        out[kind] = _sum(parts)
    return out


@dataclass
class ScoreInputs:
    """What a criterion function reads: the model's layers, calibration batches, and shared statistics."""

    model: Any
    batches: torch.Tensor | None
    seed: int
    layouts: list
    lins: list[dict]
    stats: list | None = None  # layer-wise input statistics (wanda, flap, depth), or K-FAC (surgeon)
    progress: Any = None
    layer_scores: torch.Tensor | None = None  # a criterion may score whole layers itself (random does)


def _calibration(inp: ScoreInputs) -> torch.Tensor:
    if inp.batches is None:  # score() refuses this for criteria registered with needs_data
        raise SlimdeployError("this criterion needs calibration data")
    return inp.batches


def random_criterion(inp: ScoreInputs) -> list[dict]:
    g = torch.Generator().manual_seed(inp.seed)
    per_layer = [
        {"mlp": criteria.random_scores(lay.intermediate, g), "head": criteria.random_scores(lay.heads, g)}
        | {"kv": criteria.random_scores(lay.kv_heads, g)}
        for lay in inp.layouts
    ]
    inp.layer_scores = criteria.random_scores(len(inp.layouts), g)
    return per_layer


def _magnitude(inp: ScoreInputs, p: int) -> list[dict]:
    return [
        _aggregate(lay, lambda n, li=li: criteria.magnitude_map(inp.lins[li][n].weight.detach().float(), p))
        for li, lay in enumerate(inp.layouts)
    ]


def l1_criterion(inp: ScoreInputs) -> list[dict]:
    return _magnitude(inp, 1)


def l2_criterion(inp: ScoreInputs) -> list[dict]:
    return _magnitude(inp, 2)


def _input_stats(inp: ScoreInputs, with_cov: bool = False) -> list:
    if inp.stats is None or (with_cov and any(st.inputs["o"].cov is None for st in inp.stats)):
        inp.stats = layerwise_input_stats(inp.model, _calibration(inp), with_cov=with_cov, progress=inp.progress)
    return inp.stats


def wanda_criterion(inp: ScoreInputs) -> list[dict]:
    stats = _input_stats(inp)
    return [
        _aggregate(
            lay, lambda n, li=li: criteria.wanda_map(inp.lins[li][n].weight.detach().float(), stats[li].inputs[n].norm)
        )
        for li, lay in enumerate(inp.layouts)
    ]


def flap_criterion(inp: ScoreInputs) -> list[dict]:
    stats = _input_stats(inp)
    return [
        _aggregate(
            lay,
            lambda n, li=li: criteria.flap_map(
                inp.lins[li][n].weight.detach().float(), stats[li].inputs[n].var, n in criteria.CONSUMERS
            ),
        )
        for li, lay in enumerate(inp.layouts)
    ]


def taylor_criterion(inp: ScoreInputs) -> list[dict]:
    gstats = gradient_stats(inp.model, _calibration(inp), kfac=False, weight_grads=True, progress=inp.progress)
    return [
        _aggregate(
            lay,
            lambda n, li=li: criteria.taylor_map(
                inp.lins[li][n].weight.detach().float(), gstats[li].weight_grads[n].float()
            ),
        )
        for li, lay in enumerate(inp.layouts)
    ]


def loraprune_criterion(inp: ScoreInputs) -> list[dict]:
    from slimdeploy.score.loraprune import loraprune_maps

    maps = loraprune_maps(inp.model, _calibration(inp), seed=inp.seed, progress=inp.progress)
    return [_aggregate(lay, lambda n, li=li: maps[li][n]) for li, lay in enumerate(inp.layouts)]


def surgeon_criterion(inp: ScoreInputs) -> list[dict]:
    inp.stats = gradient_stats(inp.model, _calibration(inp), kfac=True, progress=inp.progress)  # kept for the update
    return [_surgeon_layer(lay, inp.lins[li], inp.stats[li]) for li, lay in enumerate(inp.layouts)]


def surgeon_layerwise_criterion(inp: ScoreInputs) -> list[dict]:
    """The Surgeon's structured OBS costs with the layer-wise curvature (G = I, A from each layer's own
    inputs): only a layer's inputs are needed, so it runs layer by layer (sequential pruning)."""
    stats = _input_stats(inp, with_cov=True)  # kept for the update (cols)
    return [_surgeon_layer(lay, inp.lins[li], stats[li], layerwise=True) for li, lay in enumerate(inp.layouts)]


def score(
    model, criterion: str, batches: torch.Tensor | None, seed: int = 0, need_layers: bool = False, progress=None
) -> GroupScores:
    """Score every group of every decoder layer of `model` with `criterion` (a registered name)."""
    spec = get_criterion(criterion)
    if spec.needs_data and batches is None:
        raise SlimdeployError(f"criterion {criterion!r} needs calibration data")
    layers = decoder_layers(model)
    inp = ScoreInputs(model, batches, seed, [layer_layout(ly) for ly in layers], [linears(ly) for ly in layers])
    inp.progress = progress
    if batches is not None and need_layers and criterion != "random":  # depth: block influence (ShortGPT)
        inp.layer_scores = torch.tensor([s.block_influence for s in _input_stats(inp)], dtype=torch.float64)
    per_layer = spec.function()(inp)
    for li, s in enumerate(per_layer):
        for kind, v in s.items():
            if not torch.isfinite(v).all():
                raise SlimdeployError(f"criterion {criterion} gave non-finite scores in layer {li} ({kind})")
    return GroupScores(per_layer, inp.layer_scores, criterion, inp.stats)
