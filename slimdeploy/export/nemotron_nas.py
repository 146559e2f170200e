"""Per-layer widths as vLLM's DeciLM ("nemotron-nas") checkpoint format.

The format keeps query heads, hidden size and head_dim global and lets each layer choose its KV heads
(`n_heads_in_group` = query heads per KV head, so KV heads = heads / n_heads_in_group), its MLP width
(`intermediate_size`, read verbatim) or drop attention / MLP (`no_op`). Shapes it cannot express are padded
with zeros, which is exact:
- a removed query head comes back with zero q rows and zero o_proj columns (its output is multiplied by 0);
- a padded KV head has zero k/v rows and only padded (zero-output) query heads attend to it.
The padding is counted in the export report, because it costs compute that the pruned model saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimdeploy.analyze.adapters import decoder_layers, family_of, layer_layout
from slimdeploy.errors import SlimdeployError

# the format has no q_norm/k_norm (Qwen3) and no sliding windows
SUPPORTED = {"llama", "mistral", "qwen2"}
AUTO_MAP = {
    "AutoConfig": "configuration_decilm.DeciLMConfig",
    "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
}


@dataclass(frozen=True)
class BlockPlan:
    heads: int  # live query heads of the pruned layer
    kv_heads: int  # live KV heads
    group: int  # n_heads_in_group in the export (0 when attention is a no-op)
    intermediate: int  # 0 when the MLP is a no-op

    def padded_kv(self, total_heads: int) -> int:
        return total_heads // self.group if self.group else 0


def plan_blocks(widths: list[dict], total_heads: int) -> list[BlockPlan]:
    """Pick, per layer, the n_heads_in_group that needs the fewest padded KV heads (pure)."""
    plans = []
    for i, w in enumerate(widths):
        heads, kv = w["heads"], w["kv_heads"]
        if heads == 0:
            plans.append(BlockPlan(0, 0, 0, w["intermediate"]))
            continue
        per_kv = heads // kv
        fits = [g for g in range(per_kv, total_heads + 1) if total_heads % g == 0 and total_heads // g >= kv]
        if not fits:
            raise SlimdeployError(
                f"layer {i}: {kv} KV heads x {per_kv} query heads do not fit {total_heads} global query heads"
            )
        plans.append(BlockPlan(heads, kv, max(fits), w["intermediate"]))
    return plans


def block_configs(plans: list[BlockPlan]) -> list[dict]:
    return [
        {
            "attention": {"no_op": p.group == 0, "n_heads_in_group": p.group or None},
            "ffn": {"no_op": p.intermediate == 0, "intermediate_size": p.intermediate or None},
        }
        for p in plans
    ]


def _spread_heads(w: torch.Tensor, plan: BlockPlan, total: int, head_dim: int, dim: int) -> torch.Tensor:
    """Place the live query heads (grouped by KV head) at their slots in a zero tensor of `total` heads."""
    per_kv = plan.heads // plan.kv_heads
    shape = list(w.shape)
    shape[dim] = total * head_dim
    out = w.new_zeros(shape)
    for j in range(plan.kv_heads):
        for t in range(per_kv):
            src = slice((j * per_kv + t) * head_dim, (j * per_kv + t + 1) * head_dim)
            dst = slice((j * plan.group + t) * head_dim, (j * plan.group + t + 1) * head_dim)
            out.narrow(dim, dst.start, head_dim).copy_(w.narrow(dim, src.start, head_dim))
    return out


def _pad_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    out = w.new_zeros((rows, *w.shape[1:]))
    out[: w.shape[0]] = w
    return out


def layer_state(layer, plan: BlockPlan, prefix: str, total_heads: int) -> dict[str, torch.Tensor]:
    """The layer's weights in the export's shapes (padded where the format needs it)."""
    state: dict[str, torch.Tensor] = {}
    if plan.group:
        attn = layer.self_attn
        hd = attn.head_dim
        kv_rows = plan.padded_kv(total_heads) * hd
        state[f"{prefix}.input_layernorm.weight"] = layer.input_layernorm.weight
        state[f"{prefix}.self_attn.q_proj.weight"] = _spread_heads(attn.q_proj.weight, plan, total_heads, hd, 0)
        state[f"{prefix}.self_attn.o_proj.weight"] = _spread_heads(attn.o_proj.weight, plan, total_heads, hd, 1)
        for name in ("k_proj", "v_proj"):
            state[f"{prefix}.self_attn.{name}.weight"] = _pad_rows(getattr(attn, name).weight, kv_rows)
        if attn.q_proj.bias is not None:
            state[f"{prefix}.self_attn.q_proj.bias"] = _spread_heads(attn.q_proj.bias, plan, total_heads, hd, 0)
            for name in ("k_proj", "v_proj"):
                state[f"{prefix}.self_attn.{name}.bias"] = _pad_rows(getattr(attn, name).bias, kv_rows)
        if attn.o_proj.bias is not None:
            state[f"{prefix}.self_attn.o_proj.bias"] = attn.o_proj.bias
    if plan.intermediate:
        state[f"{prefix}.post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
        for name in ("gate_proj", "up_proj", "down_proj"):
            lin = getattr(layer.mlp, name)
            state[f"{prefix}.mlp.{name}.weight"] = lin.weight
            if lin.bias is not None:
                state[f"{prefix}.mlp.{name}.bias"] = lin.bias
    return state


def to_nemotron_nas(model) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(config dict, state dict, padding report) of a per-layer-width model in the DeciLM format."""
    family = family_of(model)
    if family.model_type not in SUPPORTED:
        raise SlimdeployError(
            f"the DeciLM (nemotron-nas) format cannot represent {family.model_type} models "
            f"(supported: {', '.join(sorted(SUPPORTED))}); prune with --allocation uniform"
        )
    cfg = model.config
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        if cfg.sliding_window < cfg.max_position_embeddings:
            raise SlimdeployError("the DeciLM format has no sliding-window attention; prune with --allocation uniform")
    total = cfg.num_attention_heads
    widths = [vars(layer_layout(layer)) for layer in decoder_layers(model)]
    plans = plan_blocks(widths, total)
    state = {k: v for k, v in model.state_dict().items() if ".layers." not in k}
    for i, (layer, plan) in enumerate(zip(decoder_layers(model), plans, strict=True)):
        state.update(layer_state(layer, plan, f"model.layers.{i}", total))
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    config = cfg.to_dict()
    for key in ("slimdeploy_layer_widths", "auto_map", "transformers_version", "use_sliding_window"):
        config.pop(key, None)
    first_kv = next((total // p.group for p in plans if p.group), cfg.num_key_value_heads)
    config.update(
        architectures=["DeciLMForCausalLM"],
        model_type="nemotron-nas",
        auto_map=dict(AUTO_MAP),
        block_configs=block_configs(plans),
        num_key_value_heads=first_kv,
        intermediate_size=max((p.intermediate for p in plans), default=0),
        attention_bias=False,
        qkv_bias=family.qkv_bias,
        mlp_bias=False,
    )
    hd = decoder_layers(model)[0].self_attn.head_dim if plans else 0
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
