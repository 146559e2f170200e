"""Sequential onloading: a model whose decoder layers stay on the `meta` device until each is needed.

`skeleton()` builds the model on `meta` and reads only what is not a decoder layer (embeddings, final norm,
LM head, rotary buffers); `onload_layer` reads one layer's tensors from the memory-mapped safetensors onto the
compute device and `offload_layer` returns it to `meta` (shapes kept, memory freed). Peak memory is then
the skeleton plus one layer, whatever the depth (llm-compressor's and SparseGPT's sequential scheme).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slimdeploy.errors import SlimdeployError


def index_weight_map(model_dir: Path) -> dict[str, str] | None:
    """The weight map of `model.safetensors.index.json` (None without one), refused when it is not one or
    names shards that are not in the folder."""
    index = Path(model_dir) / "model.safetensors.index.json"
    if not index.exists():
        return None
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SlimdeployError(f"{index} is not a safetensors index ({exc}); re-export the model") from None
    missing = sorted({f for f in weight_map.values() if not (Path(model_dir) / f).exists()})
    if missing:
        raise SlimdeployError(
            f"{index} names shards that are not in {model_dir}: {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}; download the missing files or re-export the model"
        )
    return weight_map


class WeightIndex:
    """Tensor name -> safetensors file, from `model.safetensors.index.json` or the shards' own headers.

    Every shard the index names must exist (checked here, before any weight is read)."""

    def __init__(self, model_dir: Path):
        from safetensors import safe_open

        self.dir = Path(model_dir)
        self.files: dict[str, Path] = {}
        weight_map = index_weight_map(self.dir)
        if weight_map is not None:
            self.files = {name: self.dir / f for name, f in weight_map.items()}
        else:
            shards = sorted(self.dir.glob("*.safetensors"))
            if not shards:
                raise SlimdeployError(f"{self.dir} has no *.safetensors weights; sequential pruning reads safetensors")
            for shard in shards:
                with safe_open(str(shard), framework="pt") as f:
                    self.files.update({name: shard for name in f.keys()})

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors (each file opened once, memory-mapped: only these tensors are read)."""
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for name in names:
            if name not in self.files:
                raise SlimdeployError(f"{self.dir}: weight {name} is in no safetensors file; re-export the model")
            by_file.setdefault(self.files[name], []).append(name)
        for path, group in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                out.update({name: f.get_tensor(name) for name in group})
        return out


def layer_prefixes(model) -> list[str]:
    """'model.layers.3.' for each decoder layer, as the state-dict names spell them."""
    from slimdeploy.analyze.adapters import decoder_layers

    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(layer)] + "." for layer in decoder_layers(model)]


def skeleton(model_dir: Path, dtype: torch.dtype, device: str, trust_remote_code: bool = False):
    """The model with every weight on `meta` (no memory); only non-persistent buffers (rotary inv_freq),
    computed at construction, are built on `device`. Weights come in with `onload_rest`/`onload_layer`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    index = WeightIndex(model_dir)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    prefixes = tuple(p.rstrip(".") for p in layer_prefixes(model))
    for name, module in list(model.named_modules()):
        if name.startswith(prefixes) or not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        try:
            with torch.device(device):
                rebuilt = type(module)(config=model.config)
        except TypeError:
            raise SlimdeployError(
                f"cannot rebuild buffer module {name} ({type(module).__name__}) off the meta device; "
                "prune this architecture in memory (without --sequential)"
            ) from None
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, rebuilt)
    return model.eval(), index


def rest_names(model, index: WeightIndex) -> list[str]:
    """State-dict names outside the decoder layers (embeddings, final norm, LM head unless tied)."""
    prefixes = tuple(layer_prefixes(model))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return [n for n in model.state_dict() if not n.startswith(prefixes) and not (tied and n == "lm_head.weight")]


def onload_rest(model, index: WeightIndex, device: str, dtype: torch.dtype) -> None:
    """Read what runs before decoder layer 0 onto `device`: everything outside the decoder layers except an
    untied LM head (at 8B that head is 1 GB in bf16, never used by the layer-by-layer passes)."""
    names = rest_names(model, index)
    missing = [n for n in names if n not in index]
    if missing:
        raise SlimdeployError(
            f"{index.dir}: weights {missing[:3]} are missing from the safetensors; re-export the model"
        )
    head = {id(p) for p in model.get_output_embeddings().parameters()}
    head_names = {n for n, p in model.named_parameters() if id(p) in head}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    names = [n for n in names if tied or n not in head_names]
    state = {n: t.to(device=device, dtype=dtype) for n, t in index.read(names).items()}
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()


def offload_rest(model) -> None:
    """Embeddings, final norm and LM head back to `meta` (a 128k-vocabulary model's are 2 GB in bf16);
    buffers computed at construction (rotary) stay."""
    prefixes = tuple(layer_prefixes(model))
    meta = {
        n: torch.empty_like(t, device="meta")
        for n, t in model.state_dict().items()
        if not n.startswith(prefixes) and not t.is_meta
    }
    model.load_state_dict(meta, strict=False, assign=True)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def onload_layer(layer, prefix: str, index: WeightIndex, device: str, dtype: torch.dtype) -> None:
    """Read one decoder layer's tensors onto `device` in `dtype` (it must be on meta, with its shapes)."""
    names = [prefix + n for n in layer.state_dict()]
    state = {n[len(prefix) :]: t.to(device=device, dtype=dtype) for n, t in index.read(names).items()}
    layer.load_state_dict(state, strict=True, assign=True)
    for name, buf in layer.named_buffers():
        if buf.is_meta:
            raise SlimdeployError(f"decoder layer buffer {prefix}{name} cannot be onloaded; prune without --sequential")


def offload_layer(layer) -> None:
    """Back to `meta`: the shapes stay (widths, parameter counts), the memory is freed."""
    layer.to("meta")
