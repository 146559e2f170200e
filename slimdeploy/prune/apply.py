"""Physical slicing: kept indices in, a smaller dense model out (weights, biases, module attributes, config).

The record of what was kept, relative to the *original* model, lives in `model.slimdeploy_record` and is
saved as `pruning.json`, so pruning a pruned model composes and anyone can check the result.
"""

from __future__ import annotations

import copy

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


def current_widths(model) -> list[dict]:
    return [
        {"heads": lay.heads, "kv_heads": lay.kv_heads, "intermediate": lay.intermediate}
        for lay in (layer_layout(layer) for layer in decoder_layers(model))
    ]


def sync_config(model) -> bool:
    """Write the live widths into the config; True when uniform (a stock config then describes the model)."""
    widths = current_widths(model)
    cfg = model.config
    # written explicitly: configs without head_dim (Qwen2's real config.json files) would otherwise let
    # from_pretrained derive hidden / heads, which is wrong once heads are removed
    attn = next((getattr(layer, "self_attn", None) for layer in decoder_layers(model)), None)
    if attn is not None and getattr(attn, "head_dim", None):
        cfg.head_dim = int(attn.head_dim)
    uniform = all(w == widths[0] for w in widths)
    if uniform:
        cfg.num_attention_heads = widths[0]["heads"]
        cfg.num_key_value_heads = widths[0]["kv_heads"]
        cfg.intermediate_size = widths[0]["intermediate"]
        if hasattr(cfg, "slimdeploy_layer_widths"):
            del cfg.slimdeploy_layer_widths
    else:
        cfg.slimdeploy_layer_widths = widths
    return uniform


def initial_record(model) -> dict:
    """What 'nothing removed yet' looks like, relative to this model."""
    cfg = model.config
    return {
        "original": {
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "intermediate_size": cfg.intermediate_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "layers": [
            {
                "source_layer": i,
                "mlp_keep": list(range(lay.intermediate)),
                "heads_keep": list(range(lay.heads)),
                "kv_keep": list(range(lay.kv_heads)),
            }
            for i, lay in enumerate(layer_layout(layer) for layer in decoder_layers(model))
        ],
    }


def record_of(model) -> dict:
    if getattr(model, "slimdeploy_record", None) is None:
        model.slimdeploy_record = initial_record(model)
    return model.slimdeploy_record


def apply_plan(model, plan) -> None:
    """Slice every layer as `plan` says (kept indices in the model's current numbering) and update the record."""
    record = copy.deepcopy(record_of(model))
    layers = decoder_layers(model)
    for i, lp in enumerate(plan.layers):
        if lp is None:
            continue
        entry = record["layers"][i]
        if lp.mlp_keep is not None:
            prune_mlp(layers[i], lp.mlp_keep)
            entry["mlp_keep"] = [entry["mlp_keep"][j] for j in lp.mlp_keep.tolist()]
        if lp.heads_keep is not None:
            prune_attention(layers[i], lp.heads_keep, lp.kv_keep)
            entry["heads_keep"] = [entry["heads_keep"][j] for j in lp.heads_keep.sort().values.tolist()]
            entry["kv_keep"] = [entry["kv_keep"][j] for j in lp.kv_keep.sort().values.tolist()]
    if plan.layers_keep is not None:
        drop_layers(model, plan.layers_keep)
        record["layers"] = [record["layers"][i] for i in plan.layers_keep]
    sync_config(model)
    model.slimdeploy_record = record
