"""DeciLM / "nemotron-nas" causal LM for transformers, written by slimdeploy into pruned checkpoints.

A Llama whose layers differ: per-layer KV heads (`n_heads_in_group`), per-layer MLP width, and layers
without attention or without MLP (`no_op`). Query heads, hidden size and head_dim are global, as in
vLLM's DeciLMForCausalLM, which serves the same weights.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaForCausalLM

from .configuration_decilm import DeciLMConfig


class NoOpAttention(nn.Module):
    """A removed attention sub-block: adds nothing to the residual stream.

    It still writes a 1-wide placeholder into the KV cache: transformers reads the cached length from the
    cache layers (layer 0 by default) to place positions and masks, so every layer must advance it.
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kw):
        if past_key_values is not None:
            stub = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            past_key_values.update(stub, stub, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class NoOpMLP(nn.Module):
    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


def _linear(n_in: int, n_out: int, bias: bool) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=bias)


class DeciLMForCausalLM(LlamaForCausalLM):
    config_class = DeciLMConfig

    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        qkv_bias = getattr(config, "qkv_bias", config.attention_bias)
        for i, (layer, block) in enumerate(zip(self.model.layers, config.block_configs, strict=True)):
            if block.attention.no_op:
                layer.self_attn = NoOpAttention(i)
                layer.input_layernorm = nn.Identity()
            else:
                kv = heads // block.attention.n_heads_in_group
                attn = layer.self_attn
                attn.num_key_value_groups = block.attention.n_heads_in_group
                attn.q_proj = _linear(hidden, heads * head_dim, qkv_bias)
                attn.k_proj = _linear(hidden, kv * head_dim, qkv_bias)
                attn.v_proj = _linear(hidden, kv * head_dim, qkv_bias)
                attn.o_proj = _linear(heads * head_dim, hidden, config.attention_bias)
            if block.ffn.no_op:
                layer.mlp = NoOpMLP()
                layer.post_attention_layernorm = nn.Identity()
            else:
                size = block.ffn.intermediate_size
                mlp = layer.mlp
                mlp.gate_proj = _linear(hidden, size, config.mlp_bias)
                mlp.up_proj = _linear(hidden, size, config.mlp_bias)
                mlp.down_proj = _linear(size, hidden, config.mlp_bias)
        self.post_init()
