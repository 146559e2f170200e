"""A decoder with an explicit KV cache, for export through torch.onnx (dynamo).

The transformers model's own submodules (embeddings, norms, projections, MLP, rotary embedding, head) do
the work; only the cache is made explicit: per-layer `past_key_i/past_value_i` inputs of shape
[batch, kv_heads_i, past, head_dim] and `present_*` outputs with the new tokens appended. One graph serves
prefill (past = 0) and decode (seq = 1). Layer widths are read per layer, so per-layer-width models export
too.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from slimdeploy.analyze.adapters import decoder_layers, family_of, layer_layout


def cache_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
    return past, [name.replace("past_", "present_") for name in past]


class DecoderWithCache(nn.Module):
    def __init__(self, model):
        super().__init__()
        family_of(model)  # refuses families this wrapper does not know
        self.model = model
        self.layouts = [layer_layout(layer) for layer in decoder_layers(model)]

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        inner = self.model.model
        seq = input_ids.shape[1]
        past_len = past[0].shape[2]
        positions = (torch.arange(seq, device=input_ids.device) + past_len).unsqueeze(0)
        h = inner.embed_tokens(input_ids)
        cos, sin = inner.rotary_emb(h, positions)
        # causal mask over [past + new] keys: query i (absolute past_len + i) sees keys j <= past_len + i
        keys = torch.arange(past_len + seq, device=input_ids.device)
        allowed = keys.unsqueeze(0) <= positions.transpose(0, 1)
        bias = torch.zeros(allowed.shape, dtype=h.dtype).masked_fill(~allowed, torch.finfo(h.dtype).min)
        presents = []
        for i, (layer, lay) in enumerate(zip(decoder_layers(self.model), self.layouts, strict=True)):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            shape = (x.shape[0], seq, -1, lay.head_dim)
            q = attn.q_proj(x).view(shape).transpose(1, 2)
            k = attn.k_proj(x).view(shape).transpose(1, 2)
            v = attn.v_proj(x).view(shape).transpose(1, 2)
            if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            rep = lay.q_per_kv
            kr = k.repeat_interleave(rep, dim=1) if rep > 1 else k
            vr = v.repeat_interleave(rep, dim=1) if rep > 1 else v
            scores = torch.matmul(q, kr.transpose(2, 3)) * (lay.head_dim**-0.5) + bias
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = torch.matmul(probs, vr).transpose(1, 2).reshape(x.shape[0], seq, -1)
            h = h + attn.o_proj(out)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.model.lm_head(inner.norm(h))
        return (logits, *presents)

    def empty_cache(self, batch: int = 1, past: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
        return [
            torch.zeros(batch, lay.kv_heads, past, lay.head_dim, dtype=dtype) for lay in self.layouts for _ in (0, 1)
        ]
