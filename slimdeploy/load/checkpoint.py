"""Model folders: writing them (safetensors, tokenizer, the PruneRecord) and reading per-layer-width ones.

Uniform models reload with plain `from_pretrained`. Models with per-layer widths carry
`slimdeploy_layer_widths` in config.json; `load_per_layer` builds the stock model, narrows each layer to
its widths, then reads the safetensors (vLLM loads them through the DeciLM export instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slimdeploy.errors import SlimdeployError

if TYPE_CHECKING:  # typing only: load/ never imports prune/ at run time
    from slimdeploy.prune.record import PruneRecord


def check_finite(model, source: str) -> None:
    """NaN/Inf weights make every later number meaningless: refuse them (at load, before save), naming the
    tensor; `source` says where (a path, or what was about to happen)."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise SlimdeployError(f"{source}: weight {name} contains NaN or Inf; repair or re-export the model")


def save_model(model, tokenizer, out_dir: Path, record: PruneRecord | None = None) -> None:
    """save_pretrained (safetensors) + tokenizer + the PruneRecord (pruning.json) into an existing directory.

    A model still wrapped with LoRA layers (an adapter not merged yet) is saved as its frozen base weights,
    under the base model's own names: the adapter is saved on its own."""
    check_finite(model, "refusing to save the model")
    state = model.state_dict()
    if any(".base_layer." in k for k in state):
        state = {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}
        model.save_pretrained(out_dir, state_dict=state)
    else:
        model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if record is not None:
        record.save(out_dir)


def load_per_layer(path: Path, dtype):
    """A model whose layers have different widths (config.slimdeploy_layer_widths), from safetensors."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from slimdeploy.analyze.adapters import decoder_layers
    from slimdeploy.analyze.slicing import prune_attention, prune_mlp

    config = AutoConfig.from_pretrained(path)
    widths = config.slimdeploy_layer_widths
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if dtype == "auto" else dtype)
    for layer, w in zip(decoder_layers(model), widths, strict=True):
        prune_mlp(layer, torch.arange(w["intermediate"]))
        kv = torch.arange(w["kv_heads"])
        per = w["heads"] // w["kv_heads"]
        q_per_kv = config.num_attention_heads // config.num_key_value_heads
        heads = torch.cat([g * q_per_kv + torch.arange(per) for g in kv.tolist()])
        prune_attention(layer, heads, kv)
    state = {}
    for shard in sorted(path.glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SlimdeployError(
            f"{path}: weights do not match the per-layer config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    if dtype not in ("auto", None):
        model.to(dtype)
    return model.eval()
