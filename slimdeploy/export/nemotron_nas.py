"""Per-layer widths as vLLM's DeciLM ("nemotron-nas") checkpoint: the in-memory model's side.

The format and its padding are described (and implemented as pure functions) in `load/decilm_format.py`,
which writes pruned outputs in the same format; here a loaded narrow model becomes (config, state, padding
report) for the vLLM export.
"""

from __future__ import annotations

import torch

from slimdeploy.analyze.adapters import decoder_layers, layer_layout
from slimdeploy.load.decilm_format import BlockPlan, decilm_config, pad_layer, plan_blocks

__all__ = ["BlockPlan", "plan_blocks", "to_nemotron_nas"]


def to_nemotron_nas(model) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(config dict, state dict, padding report) of a per-layer-width model in the DeciLM format."""
    cfg = model.config
    total = cfg.num_attention_heads
    widths = [vars(layer_layout(layer)) for layer in decoder_layers(model)]
    base = cfg.to_dict()
    config, plans = decilm_config(base, widths)
    state = {k: v for k, v in model.state_dict().items() if ".layers." not in k}
    hd = decoder_layers(model)[0].self_attn.head_dim if plans else 0
    for i, (layer, plan) in enumerate(zip(decoder_layers(model), plans, strict=True)):
        padded = pad_layer(layer.state_dict(), plan, total, hd)
        state.update({f"model.layers.{i}.{k}": v for k, v in padded.items()})
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    pad_q = sum(total - p.heads for p in plans if p.group)
    pad_kv = sum(p.padded_kv(total) - p.kv_heads for p in plans if p.group)
    report = {
        "padded_query_heads": pad_q,
        "padded_kv_heads": pad_kv,
        "padded_parameters": (2 * pad_q + 2 * pad_kv) * hd * cfg.hidden_size,
        "no_op_attention_layers": [i for i, p in enumerate(plans) if not p.group],
        "no_op_mlp_layers": [i for i, p in enumerate(plans) if not p.intermediate],
        "layers": [
            {"kv_heads": p.padded_kv(total), "n_heads_in_group": p.group or None, "intermediate_size": p.intermediate}
            for p in plans
        ],
    }
    return config, state, report
