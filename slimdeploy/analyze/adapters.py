"""Per-family layout: where the projections live and how heads map to KV groups.

Every supported family is a pre-norm decoder with q/k/v/o attention projections (GQA), a SwiGLU MLP
(gate/up/down) and RMSNorm; they differ only in details this table records. Anything else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimdeploy.errors import SlimdeployError


@dataclass(frozen=True)
class Family:
    model_type: str
    qkv_bias: bool  # Qwen2: q/k/v carry biases (sliced with their rows)
    head_norms: bool  # Qwen3: q_norm/k_norm over head_dim, shared by all heads (never sliced)


FAMILIES = {
    "llama": Family("llama", qkv_bias=False, head_norms=False),
    "mistral": Family("mistral", qkv_bias=False, head_norms=False),
    "qwen2": Family("qwen2", qkv_bias=True, head_norms=False),
    "qwen3": Family("qwen3", qkv_bias=False, head_norms=True),
}


def family_of(model) -> Family:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise SlimdeployError(
            f"unsupported architecture {model_type!r} for pruning; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def decoder_layers(model):
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:  # another layout (GPT-2's transformer.h, ...): say which families we know
        family_of(model)
        raise SlimdeployError(f"{type(model).__name__} has no model.layers; supported: {', '.join(sorted(FAMILIES))}")
    return layers


@dataclass
class LayerLayout:
    """The live widths of one decoder layer (they differ between layers after global pruning)."""

    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @property
    def q_per_kv(self) -> int:
        return self.heads // self.kv_heads


def layer_layout(layer) -> LayerLayout:
    attn, mlp = layer.self_attn, layer.mlp
    head_dim = attn.head_dim
    return LayerLayout(
        heads=attn.q_proj.out_features // head_dim,
        kv_heads=attn.k_proj.out_features // head_dim,
        head_dim=head_dim,
        intermediate=mlp.gate_proj.out_features,
    )


def linears(layer) -> dict:
    """The seven projections of a decoder layer by short name."""
    a, m = layer.self_attn, layer.mlp
    return {
        "q": a.q_proj,
        "k": a.k_proj,
        "v": a.v_proj,
        "o": a.o_proj,
        "gate": m.gate_proj,
        "up": m.up_proj,
        "down": m.down_proj,
    }
