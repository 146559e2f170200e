"""Physical slicing: kept indices in, a smaller dense model out (weights, biases, module attributes, config).

`apply_plan` returns the updated PruneRecord (prune/record.py), what was kept relative to the original model.
"""

from __future__ import annotations

from slimdeploy.analyze.adapters import decoder_layers, layer_layout
from slimdeploy.analyze.slicing import drop_layers, prune_attention, prune_mlp
from slimdeploy.prune.plan import LayerPlan
from slimdeploy.prune.record import PruneRecord


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


def slice_layer(layer, lp: LayerPlan) -> None:
    """Keep one layer's MLP channels and heads as `lp` says (indices in its current numbering)."""
    if lp.mlp_keep is not None:
        prune_mlp(layer, lp.mlp_keep)
    if lp.heads_keep is not None:
        assert lp.kv_keep is not None, "a plan that keeps heads names the KV heads too"
        prune_attention(layer, lp.heads_keep, lp.kv_keep)


def apply_plan(model, plan, record: PruneRecord | None = None) -> PruneRecord:
    """Slice every layer as `plan` says (kept indices in the model's current numbering); returns the record
    of what the model now keeps relative to the original (`record`: the one it had, None: unpruned)."""
    new_record = (record or PruneRecord.initial(model)).after(plan)
    layers = decoder_layers(model)
    for i, lp in enumerate(plan.layers):
        if lp is not None:
            slice_layer(layers[i], lp)
    if plan.layers_keep is not None:
        drop_layers(model, plan.layers_keep)
    sync_config(model)
    return new_record
