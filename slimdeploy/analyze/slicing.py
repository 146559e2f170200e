"""Slicing primitives: keep given rows/columns of the projections of one decoder layer, in place.

They sit beside the family layouts (not in prune/) because loading a checkpoint with per-layer widths
narrows a stock model with them before reading its weights: load/ needs them and must not import prune/.
"""

from __future__ import annotations

import torch
from torch import nn

from slimdeploy.analyze.adapters import decoder_layers, layer_layout, linears
from slimdeploy.analyze.groups import COLS, ROWS, head_blocks


def slice_linear(linear: nn.Linear, keep: torch.Tensor, axis: int) -> None:
    """Keep `keep` rows (axis 0: outputs, and the bias) or columns (axis 1: inputs) of a Linear, in place."""
    keep = keep.to(linear.weight.device)
    with torch.no_grad():
        linear.weight = nn.Parameter(
            linear.weight.index_select(axis, keep).contiguous(), requires_grad=linear.weight.requires_grad
        )
        if axis == ROWS and linear.bias is not None:
            linear.bias = nn.Parameter(
                linear.bias.index_select(0, keep).contiguous(), requires_grad=linear.bias.requires_grad
            )
    if axis == ROWS:
        linear.out_features = len(keep)
    else:
        linear.in_features = len(keep)


def prune_mlp(layer, keep: torch.Tensor) -> None:
    m = layer.mlp
    slice_linear(m.gate_proj, keep, ROWS)
    slice_linear(m.up_proj, keep, ROWS)
    slice_linear(m.down_proj, keep, COLS)
    if hasattr(m, "intermediate_size"):
        m.intermediate_size = len(keep)


def check_head_selection(keep_heads: torch.Tensor, keep_kv: torch.Tensor, q_per_kv: int) -> int:
    """Kept heads must belong to kept KV groups, the same number in each; returns that number."""
    groups = keep_heads // q_per_kv
    if not set(groups.tolist()) <= set(keep_kv.tolist()):
        raise ValueError("a kept query head belongs to a removed KV group")
    counts = torch.bincount(groups, minlength=int(keep_kv.max()) + 1)[keep_kv]
    if len(keep_kv) == 0 or counts.min() != counts.max() or counts.min() == 0:
        raise ValueError(f"every kept KV group needs the same, non-zero number of query heads (got {counts.tolist()})")
    return int(counts[0])


def prune_attention(layer, keep_heads: torch.Tensor, keep_kv: torch.Tensor) -> None:
    """Keep query heads `keep_heads` and KV heads `keep_kv` (sorted, original numbering of this layer)."""
    lay = layer_layout(layer)
    keep_heads, keep_kv = keep_heads.sort().values, keep_kv.sort().values
    per_group = check_head_selection(keep_heads, keep_kv, lay.q_per_kv)
    q_rows = head_blocks(0, lay.heads, lay.head_dim)[keep_heads].flatten()
    kv_rows = head_blocks(0, lay.kv_heads, lay.head_dim)[keep_kv].flatten()
    lin = linears(layer)
    slice_linear(lin["q"], q_rows, ROWS)
    slice_linear(lin["k"], kv_rows, ROWS)
    slice_linear(lin["v"], kv_rows, ROWS)
    slice_linear(lin["o"], q_rows, COLS)
    layer.self_attn.num_key_value_groups = per_group


def drop_layers(model, keep: list[int]) -> None:
    """Keep decoder layers `keep` (sorted), renumbering layer_idx so KV caches index the right slot."""
    layers = decoder_layers(model)
    if not keep:
        raise ValueError("cannot remove every decoder layer")
    model.model.layers = nn.ModuleList([layers[i] for i in keep])
    for new_i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_i
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_i
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)
