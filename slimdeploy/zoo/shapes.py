"""Shape-only benchmark models: the configurations of real models with random weights.

For speed and memory work where weights do not matter (latency depends on shapes only). Every report that
uses one says so: `shape_only: true` and the name. Load with `--model shape:llama-3.2-1b`.
"""

from __future__ import annotations

from slimdeploy.errors import SlimdeployError

SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(
        family="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        rope_theta=100000.0,
    ),
    "qwen2.5-0.5b": dict(
        family="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
    ),
    "llama-3.2-1b": dict(
        family="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    ),
    "llama-3.2-3b": dict(
        family="llama",
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    ),
    "llama-3.1-8b": dict(
        family="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    ),
}


def shape_config(name: str):
    """The transformers config of the named shape (marked shape-only)."""
    import transformers

    if name not in SHAPES:
        raise SlimdeployError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    spec = dict(SHAPES[name])
    family = spec.pop("family")
    theta = spec.pop("rope_theta")
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family]
    config = cls(**spec, rope_parameters={"rope_type": "default", "rope_theta": theta})
    config.slimdeploy_shape_only = name
    return config


def shape_model(name: str, seed: int = 0):
    """A random-weight model with the named real model's shapes (fp32, eval mode)."""
    import torch
    import transformers

    config = shape_config(name)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()
