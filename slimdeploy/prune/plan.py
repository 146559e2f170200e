"""Allocation: scores + a parameter budget -> which groups every layer keeps (a PrunePlan). Pure functions.

The target is the fraction of *all* parameters removed (embeddings included, as LoRAShear and LLM-Pruner
count it). `uniform` gives every layer the same widths, so a stock config describes the result; `global`
ranks MLP channels and KV groups across layers (first/last layers protectable) for per-layer widths.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from slimdeploy.analyze.adapters import LayerLayout
from slimdeploy.analyze.groups import group_params
from slimdeploy.errors import SlimdeployError
from slimdeploy.prune.config import PruneConfig


@dataclass
class LayerPlan:
    mlp_keep: torch.Tensor | None = None  # channel indices kept (current numbering)
    heads_keep: torch.Tensor | None = None  # query heads kept
    kv_keep: torch.Tensor | None = None  # KV heads kept


@dataclass
class PrunePlan:
    layers: list[LayerPlan | None]
    layers_keep: list[int] | None = None
    predicted_params: int = 0
    widths: list[dict] = field(default_factory=list)


@dataclass
class Budget:
    """What allocation needs to know about the model, besides scores."""

    total_params: int
    hidden: int
    layouts: list[LayerLayout]
    layer_params: list[int]
    qkv_bias: bool = False


def _attention_options(lay: LayerLayout, hidden: int, kinds: set[str], tp: int) -> list[tuple[int, int]]:
    """(kv heads kept, query heads kept per KV group) that a stock config and `tp` ranks accept."""
    kvs = range(1, lay.kv_heads + 1) if "kv" in kinds else [lay.kv_heads]
    rs = range(1, lay.q_per_kv + 1) if "head" in kinds else [lay.q_per_kv]
    out = []
    for k, r in itertools.product(kvs, rs):
        heads = k * r
        if hidden % heads or heads % tp or (k % tp and tp % k):
            continue
        out.append((k, r))
    return out


def _mlp_options(lay: LayerLayout, kinds: set[str], round_to: int, tp: int) -> list[int]:
    if "mlp" not in kinds:
        return [lay.intermediate]
    opts = {lay.intermediate} | set(range(round_to, lay.intermediate, round_to))
    return sorted(o for o in opts if o % tp == 0)


def _attn_params(k: int, r: int, lay: LayerLayout, hidden: int, bias: bool) -> int:
    heads = k * r
    return (
        2 * heads * lay.head_dim * hidden
        + 2 * k * lay.head_dim * hidden
        + ((heads + 2 * k) * lay.head_dim if bias else 0)
    )


def choose_uniform_widths(
    b: Budget,
    target_remove: float,
    kinds: set[str],
    round_to: int,
    tp: int,
    attn_share: float | None,
    n: int,
    lay: LayerLayout,
    strict: bool = True,
) -> tuple[int, int, int, int]:
    """Search (kv kept, heads per kv, mlp kept) of layout `lay`, applied to each of `n` layers, that removes
    closest to `target_remove`.

    Among options within tolerance of the target, the one whose attention removal is closest to `attn_share`
    (default: attention's share of the prunable parameters, i.e. the same fraction from both). `strict`: refuse
    a result more than 2% of the parameters off (global allocation re-counts the MLP removal afterwards)."""
    a_full = _attn_params(lay.kv_heads, lay.q_per_kv, lay, b.hidden, b.qkv_bias)
    m_full = 3 * b.hidden * lay.intermediate
    share = attn_share if attn_share is not None else a_full / (a_full + m_full)
    cands = []
    for (k, r), m in itertools.product(
        _attention_options(lay, b.hidden, kinds, tp), _mlp_options(lay, kinds, round_to, tp)
    ):
        a_rm = n * (a_full - _attn_params(k, r, lay, b.hidden, b.qkv_bias))
        m_rm = n * 3 * b.hidden * (lay.intermediate - m)
        cands.append((abs(a_rm + m_rm - target_remove), abs(a_rm - share * target_remove), (k, r, m, a_rm + m_rm)))
    # within tolerance of the target, prefer the intended attention share; the tolerance is half a percent, or
    # half of one MLP rounding step across the layers when that is coarser (small models, large round_to)
    step = n * 3 * b.hidden * (round_to if "mlp" in kinds else 0)
    tol = max(0.005 * b.total_params, step / 2)
    close = [c for c in cands if c[0] <= tol]
    best = min(close, key=lambda c: (c[1], c[0]))[2] if close else (min(cands)[2] if cands else None)
    if best is None:
        raise SlimdeployError(f"no head/channel widths satisfy hidden_size {b.hidden} and tp_size {tp}")
    k, r, m, removed = best
    if strict and abs(removed - target_remove) > 0.02 * b.total_params:
        max_rm = max_removable(b, kinds, round_to, tp, n, lay)
        raise SlimdeployError(
            f"cannot remove {target_remove / b.total_params:.1%} of the parameters with {sorted(kinds)} "
            f"(round_to {round_to}, tp_size {tp}): achievable up to {max_rm / b.total_params:.1%}; closest is "
            f"{removed / b.total_params:.1%}. Lower the ratio, add structures or lower round_to"
        )
    return k, r, m, removed


def max_removable(b: Budget, kinds: set[str], round_to: int, tp: int, n: int, lay: LayerLayout) -> int:
    a_full = _attn_params(lay.kv_heads, lay.q_per_kv, lay, b.hidden, b.qkv_bias)
    opts = _attention_options(lay, b.hidden, kinds, tp)
    a_min = min(_attn_params(k, r, lay, b.hidden, b.qkv_bias) for k, r in opts) if opts else a_full
    m_min = min(_mlp_options(lay, kinds, round_to, tp))
    return n * (a_full - a_min + 3 * b.hidden * (lay.intermediate - m_min))


def reference_layout(b: Budget, layers: list[int], allocation: str) -> LayerLayout:
    """The layout whose widths the search runs on. Uniform allocation needs the layers equal (one stock config
    describes the result). Global takes the widest and counts the removal per layer from it, so layers left at
    different widths (by an earlier global shot, or a per-layer checkpoint) still lose the requested share."""
    lays = [b.layouts[i] for i in layers]
    if all(lay == lays[0] for lay in lays):
        return lays[0]
    if allocation == "uniform":
        raise SlimdeployError(
            "the model's layers have different widths, and uniform allocation gives them all the same; "
            "prune it with allocation global"
        )
    if len({(lay.head_dim, lay.q_per_kv) for lay in lays}) > 1:
        raise SlimdeployError("layers differ in head_dim or query heads per KV group; prune MLP channels only")
    kv = max(lay.kv_heads for lay in lays)
    return LayerLayout(kv * lays[0].q_per_kv, kv, lays[0].head_dim, max(lay.intermediate for lay in lays))


def top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, sorted by index (ties broken by lower index: deterministic)."""
    order = torch.argsort(scores.double(), descending=True, stable=True)
    return order[:k].sort().values


def select_heads(head_scores: torch.Tensor, kv_scores: torch.Tensor, k: int, r: int, q_per_kv: int):
    """Keep the k best KV groups, then the r best query heads inside each kept group."""
    kv_keep = top(kv_scores, k)
    heads = [g * q_per_kv + top(head_scores[g * q_per_kv : (g + 1) * q_per_kv], r) for g in kv_keep.tolist()]
    return torch.cat(heads).sort().values, kv_keep


def _round_counts(raw: list[float], full: list[int], total: int, round_to: int) -> list[int]:
    """Round per-layer kept counts to multiples of round_to (each in [round_to, full]) keeping the sum near total."""
    out = [min(f, max(round_to, int(round(x / round_to)) * round_to)) for x, f in zip(raw, full)]
    step = 0
    while sum(out) > total + round_to // 2 and step < 10_000:  # trim the layers that were rounded up most
        i = max(
            (i for i in range(len(out)) if out[i] - round_to >= round_to), key=lambda i: out[i] - raw[i], default=None
        )
        if i is None:
            break
        out[i] -= round_to
        step += 1
    return out


def make_plan(
    scores: list[dict],
    b: Budget,
    ratio: float,
    kinds: set[str],
    *,
    config: PruneConfig,
    layer_scores: torch.Tensor | None = None,
) -> PrunePlan:
    """Decide what each layer keeps so that about `ratio` of all parameters are removed (allocation,
    rounding, tensor-parallel divisibility, attention/layer shares and protected layers from `config`)."""
    allocation, round_to, tp = config.allocation, config.round_to, config.tp_size
    attn_share, layer_share = config.attn_share, config.layer_share
    protect_first, protect_last = config.protect_first, config.protect_last
    if not 0 < ratio < 1:
        raise SlimdeployError(f"ratio must be in (0, 1), got {ratio}")
    n_layers = len(b.layouts)
    target = ratio * b.total_params
    layers_keep = None
    if "layer" in kinds:
        width_kinds = kinds - {"layer"}
        share = layer_share if layer_share is not None else (1.0 if not width_kinds else 0.5)
        per_layer = sum(b.layer_params) / n_layers
        n_drop = max(1, round(share * target / per_layer)) if share > 0 else 0
        if n_drop >= n_layers:
            raise SlimdeployError(f"ratio {ratio} would remove all {n_layers} layers; lower it")
        assert layer_scores is not None, "layer pruning needs layer scores"
        layers_keep = top(layer_scores, n_layers - n_drop).tolist()
        target -= sum(b.layer_params[i] for i in range(n_layers) if i not in layers_keep)
        kinds = width_kinds
    live = layers_keep if layers_keep is not None else list(range(n_layers))
    plans: list[LayerPlan | None] = [None] * n_layers
    widths_planned = bool(kinds) and target > 0.005 * b.total_params
    if widths_planned:
        editable = [i for i in live if i >= protect_first and i < n_layers - protect_last]
        if not editable:
            raise SlimdeployError("every layer is protected; lower protect_first / protect_last")
        if allocation not in ("uniform", "global"):
            raise SlimdeployError(f"unknown allocation {allocation!r}; choose uniform or global")
        ref = reference_layout(b, editable, allocation)
        glob = allocation == "global"
        n_ed = len(editable)
        k, r, m, _ = choose_uniform_widths(b, target, kinds, round_to, tp, attn_share, n_ed, ref, strict=not glob)
        if glob:  # the uniform solution's KV groups and heads per group, ranked across layers; MLP takes the rest
            kv_rm = n_ed * (ref.kv_heads - k)
            mlp_counts, kv_counts = _global_counts(scores, b, editable, target, kv_rm, r, round_to, kinds)
        else:
            mlp_counts, kv_counts = dict.fromkeys(editable, m), dict.fromkeys(editable, k)
        for i in editable:
            lay, s = b.layouts[i], scores[i]
            heads_keep, kv_keep = select_heads(s["head"], s["kv"], kv_counts[i], r, lay.q_per_kv)
            plans[i] = LayerPlan(mlp_keep=top(s["mlp"], mlp_counts[i]), heads_keep=heads_keep, kv_keep=kv_keep)
    predicted = predict_params(b, plans, live)
    removed = 1 - predicted / b.total_params
    if widths_planned and abs(removed - ratio) > 0.03:  # a plan this far off is a bug, not rounding
        raise SlimdeployError(f"the plan removes {removed:.1%} of the parameters, not the {ratio:.1%} asked")
    return PrunePlan(layers=plans, layers_keep=layers_keep, predicted_params=predicted)


def standardize_per_layer(scores: list[dict]) -> list[dict]:
    """Divide every layer's scores (per kind) by their mean: for criteria whose scale drifts with depth
    (magnitude, activation norms), so a global ranking compares relative importance within each layer, as
    FLAP standardizes its scores. Loss-calibrated criteria (taylor, loraprune, surgeon) are ranked raw."""
    return [{k: v / v.abs().mean().clamp_min(1e-30) for k, v in layer.items()} for layer in scores]


def _global_counts(
    scores, b: Budget, editable: list[int], target: float, kv_rm: int, r: int, round_to: int, kinds: set[str]
) -> tuple[dict[int, int], dict[int, int]]:
    """Per-layer kept counts from ranking the groups of all editable layers together: `kv_rm` KV groups (each
    keeping `r` query heads), then as many MLP channels as the rest of `target` parameters. Counted on each
    layer's own widths, which differ after an earlier global shot."""
    kv_counts = {i: b.layouts[i].kv_heads for i in editable}
    if "kv" in kinds:
        allkv = torch.cat([scores[i]["kv"].double() for i in editable])
        owner = torch.cat([torch.full((b.layouts[i].kv_heads,), i) for i in editable])
        kept = owner[top(allkv, sum(kv_counts.values()) - kv_rm)]
        kv_counts = {i: max(1, int((kept == i).sum())) for i in editable}
    mlp_counts = {i: b.layouts[i].intermediate for i in editable}
    if "mlp" in kinds:
        attn_rm = 0
        for i in editable:
            lay = b.layouts[i]
            full_attn = _attn_params(lay.kv_heads, lay.q_per_kv, lay, b.hidden, b.qkv_bias)
            attn_rm += full_attn - _attn_params(kv_counts[i], r, lay, b.hidden, b.qkv_bias)
        full = [b.layouts[i].intermediate for i in editable]
        # 3 x hidden per channel; never below zero (an impossible target is refused by make_plan's check)
        keep = max(0, sum(full) - max(0, round((target - attn_rm) / (3 * b.hidden))))
        allm = torch.cat([scores[i]["mlp"].double() for i in editable])
        owner = torch.cat([torch.full((f,), i) for i, f in zip(editable, full)])
        kept = owner[top(allm, keep)]
        raw = [float((kept == i).sum()) for i in editable]
        mlp_counts = dict(zip(editable, _round_counts(raw, full, keep, round_to)))
    return mlp_counts, kv_counts


def _kept(keep: torch.Tensor | None, full: int) -> int:
    return full if keep is None else len(keep)  # None: that structure is left whole


def predict_params(b: Budget, plans: list[LayerPlan | None], live: list[int]) -> int:
    """Parameters after applying the plan: untouched layers as they are, edited ones by their kept widths."""
    total = b.total_params - sum(b.layer_params)
    for i in live:
        p, lay = plans[i], b.layouts[i]
        if p is None:
            total += b.layer_params[i]
            continue
        mlp_rm = (lay.intermediate - _kept(p.mlp_keep, lay.intermediate)) * group_params(
            "mlp", lay, b.hidden, b.qkv_bias
        )
        heads = _kept(p.heads_keep, lay.heads)
        kv = _kept(p.kv_keep, lay.kv_heads)
        attn_rm = _attn_params(lay.kv_heads, lay.q_per_kv, lay, b.hidden, b.qkv_bias) - _attn_params(
            kv, heads // kv, lay, b.hidden, b.qkv_bias
        )
        total += b.layer_params[i] - mlp_rm - attn_rm
    return total
