"""What is in a model: family, parameter counts by component, shapes, attention layout."""

from __future__ import annotations

from collections import Counter


def component_of(name: str) -> str:
    if "embed_tokens" in name or "wte" in name:
        return "embeddings"
    if "lm_head" in name:
        return "head"
    if "self_attn" in name and "norm" not in name.split("self_attn")[-1]:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    if "norm" in name:
        return "norms"
    return "other"


QUANT_META = ("weight_scale", "weight_zero_point", "weight_g_idx", "input_scale", "input_zero_point")


def param_stats(model) -> dict:
    """Parameters and their bytes as stored; `parameters()` already counts tied weights once. A quantized
    layer's weight counts at its scheme's bits (in memory it may be dequantized) and its scales add bytes,
    not parameters."""
    params = bytes_ = 0
    seen: set[int] = set()
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        bits = scheme.weights.num_bits if scheme is not None and scheme.weights is not None else None
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights once
                continue
            seen.add(id(p))
            if name in QUANT_META:
                bytes_ += p.numel() * p.element_size()
                continue
            params += p.numel()
            bytes_ += p.numel() * bits // 8 if bits and name == "weight" else p.numel() * p.element_size()
    return {"params": params, "bytes": bytes_}


def summarize(model) -> dict:
    """Parameter counts by component (tied weights counted once), per-layer shapes and the GQA layout."""
    cfg = model.config
    counts: Counter[str] = Counter()
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        counts[component_of(name)] += p.numel()
    layers = []
    # Llama-style model.layers; other layouts (GPT-2's transformer.h) are summarised too, not pruned
    blocks = getattr(getattr(model, "model", None), "layers", None)
    if blocks is None:
        blocks = getattr(getattr(model, "transformer", None), "h", None) or []
    for i, layer in enumerate(blocks):
        shapes = {n: list(p.shape) for n, p in layer.named_parameters()}
        layers.append({"index": i, "shapes": shapes})
    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    return {
        "family": cfg.model_type,
        "architecture": (cfg.architectures or [type(model).__name__])[0],
        "parameters": sum(counts.values()),
        "by_component": dict(counts),
        "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "hidden_size": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "attention": {
            "query_heads": heads,
            "kv_heads": kv,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            "queries_per_kv": heads // kv if heads and kv else None,
        },
        "intermediate_size": getattr(cfg, "intermediate_size", None),
        "vocab_size": cfg.vocab_size,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "layer_shapes": layers,
    }
