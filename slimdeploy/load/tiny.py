"""Tiny random models of every supported family, built in-process for tests and docs (no downloads)."""

from __future__ import annotations

from typing import Any

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def tiny_config(family: str = "llama", tied: bool = False, **overrides: Any):
    """A small GQA config: 4 query heads in 2 KV groups, head_dim 8, 3 layers, MLP 48 channels."""
    import transformers

    base: dict[str, Any] = dict(
        vocab_size=8192,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    classes = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }
    if family not in classes:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if family == "mistral":
        base["sliding_window"] = None
    base.update(overrides)
    return classes[family](**base)


def build_tiny_model(family: str = "llama", tied: bool = False, seed: int = 0, **overrides: Any):
    """Random weights with non-trivial norms and biases, so that tests notice every mis-sliced tensor."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tied, **overrides), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norms and biases default to 1/0: perturb them so slicing errors show
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()
