"""Model folders: writing them (safetensors, tokenizer, the PruneRecord) and reading per-layer-width ones.

Uniform models reload with plain `from_pretrained`. Models with per-layer widths carry
`slimdeploy_layer_widths` in config.json; `load_per_layer` builds the stock model, narrows each layer to
its widths, then reads the safetensors (vLLM loads them through the DeciLM export instead).
"""

from __future__ import annotations

import shutil
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


def _save_quantized(model, out_dir: Path) -> None:
    """A model carrying compressed-tensors schemes (loaded from, or made by, the quantize stage): compress a
    copy (compression works in place, and the model keeps computing after this save) and write the
    checkpoint with its quantization_config."""
    import copy

    from compressed_tensors.compressors import ModelCompressor

    bits = {m.quantization_scheme.weights.num_bits for m in model.modules() if hasattr(m, "quantization_scheme")}
    fmt = "pack-quantized" if bits == {4} else "int-quantized"
    frozen = copy.deepcopy(model)
    compressor = ModelCompressor.from_pretrained_model(frozen, quantization_format=fmt)
    compressor.compress_model(frozen)
    frozen.save_pretrained(out_dir)
    compressor.update_config(str(out_dir))


def save_model(model, tokenizer, out_dir: Path, record: PruneRecord | None = None) -> None:
    """save_pretrained (safetensors) + tokenizer + the PruneRecord (pruning.json) into an existing directory.

    A model still wrapped with LoRA layers (an adapter not merged yet) is saved as its frozen base weights,
    under the base model's own names: the adapter is saved on its own."""
    check_finite(model, "refusing to save the model")
    per_layer = bool(getattr(model.config, "slimdeploy_layer_widths", None))
    if per_layer:  # no stock config describes it: saved as DeciLM files, if that format can carry the family
        from slimdeploy.load.decilm_format import check_representable, write_decilm_in_place

        check_representable(model.config.to_dict())
    state = model.state_dict()
    if any(hasattr(m, "quantization_scheme") for m in model.modules()):
        _save_quantized(model, out_dir)
    elif any(".base_layer." in k for k in state):
        state = {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}
        model.save_pretrained(out_dir, state_dict=state)
    else:
        model.save_pretrained(out_dir)
    if per_layer:
        write_decilm_in_place(Path(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if record is not None:
        record.save(out_dir)


# files of a model folder that describe the tokenizer and generation: every output carries them, whether or not
# the stage that wrote it read them (a data-free prune never tokenizes, yet its output is evaluated and exported)
AUX_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "chat_template*",
    "generation_config.json",
    "LICENSE*",
)


def copy_aux_files(model_dir: Path | str, out_dir: Path) -> list[str]:
    """Copy the tokenizer, chat template and generation files of `model_dir` that `out_dir` lacks."""
    copied = []
    src = Path(model_dir)
    if not src.is_dir():
        return copied
    for pattern in AUX_FILES:
        for f in sorted(src.glob(pattern)):
            if f.is_file() and not (out_dir / f.name).exists():
                shutil.copy2(f, out_dir / f.name)
                copied.append(f.name)
    return copied


def load_per_layer(path: Path, dtype):
    """A model whose layers have different widths, from our DeciLM checkpoint (or an earlier version's stock
    config with `slimdeploy_layer_widths`): the stock model narrowed to each layer's widths, without padding."""
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from slimdeploy.analyze.adapters import decoder_layers
    from slimdeploy.analyze.slicing import prune_attention, prune_mlp
    from slimdeploy.load.decilm_format import BASE_KEY, logical_config, unpad_state

    raw = json.loads((path / "config.json").read_text())
    logical = logical_config(raw)
    config = CONFIG_MAPPING[logical["model_type"]].from_dict(logical)
    widths = config.slimdeploy_layer_widths
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if dtype == "auto" else dtype)
    for layer, w in zip(decoder_layers(model), widths, strict=True):
        prune_mlp(layer, torch.arange(w["intermediate"]))
        kv = torch.arange(w["kv_heads"])
        per = w["heads"] // w["kv_heads"] if w["kv_heads"] else 0
        q_per_kv = config.num_attention_heads // config.num_key_value_heads
        heads = torch.cat([g * q_per_kv + torch.arange(per) for g in kv.tolist()]) if per else kv
        prune_attention(layer, heads, kv)
    state = {}
    for shard in sorted(path.glob("*.safetensors")):
        state.update(load_file(shard))
    if BASE_KEY in raw:
        state = unpad_state(state, raw)
    live = {n for n, p in model.named_parameters() if p.numel()}  # a no-op block's empty tensors are not stored
    for i, w in enumerate(widths):  # nor the norm in front of it (its output meets no weights)
        if not w["heads"]:
            live.discard(f"model.layers.{i}.input_layernorm.weight")
        if not w["intermediate"]:
            live.discard(f"model.layers.{i}.post_attention_layernorm.weight")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m in live and not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SlimdeployError(
            f"{path}: weights do not match the per-layer config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    if dtype not in ("auto", None):
        model.to(dtype)
    return model.eval()
