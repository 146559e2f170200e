"""Model loading in one place: local directory, hub id (local cache first), GGUF file, or the embedded demo.

Never unpickles: transformers reads safetensors, and legacy .bin files only with `weights_only=True`.
Never runs repository code unless the caller passes `trust_remote_code=True`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimdeploy.errors import SlimdeployError

DEMO_NAME = "slimdeploy-demo"
DTYPES = ("auto", "fp32", "bf16", "fp16")


def demo_model_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "zoo" / DEMO_NAME


def torch_dtype(name: str):
    import torch

    table = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise SlimdeployError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return table[name]


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    source: str  # what the user asked for, resolved (path, hub id, gguf file)
    kind: str  # "demo" | "dir" | "hub" | "gguf" | "shape" (random weights, real shapes)


def resolve_source(spec: str | None) -> tuple[str, str]:
    """Say what `spec` is without loading anything: (kind, location)."""
    if spec is None or spec == DEMO_NAME:
        path = demo_model_dir()
        if not (path / "model.safetensors").exists():
            raise SlimdeployError(
                f"the embedded model {DEMO_NAME} is missing from {path}; reinstall slimdeploy or rebuild it "
                "with `slimdeploy zoo train-demo`"
            )
        return "demo", str(path)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise SlimdeployError(f"{spec} is a file but not a .gguf model; pass a model directory or a .gguf file")
        return "gguf", str(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise SlimdeployError(f"{spec} is not a model directory (no config.json); pass a Hugging Face model folder")
        return "dir", str(path)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep + os.sep in spec
    if looks_like_path or not spec.strip():
        raise SlimdeployError(f"model path {spec} does not exist; pass an existing directory, .gguf file or hub id")
    return "hub", spec


def _check_config(path: Path) -> None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SlimdeployError(f"{path / 'config.json'} is not valid JSON ({exc}); re-export the model") from None
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING and "auto_map" not in config:
        raise SlimdeployError(
            f"unsupported architecture: model_type {model_type!r} in {path} is unknown to transformers "
            f"and the config has no auto_map"
        )


def _check_safetensors(path: Path) -> None:
    """Open every shard's header so a truncated or corrupt file fails here with a clear message."""
    from safetensors import safe_open

    shards = sorted(path.glob("*.safetensors"))
    if not shards and not list(path.glob("*.bin")):
        raise SlimdeployError(f"{path} has a config.json but no weights (*.safetensors); re-export the model")
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as f:
                keys = list(f.keys())
                if keys:
                    f.get_slice(keys[-1])  # touches the header's last offset: catches truncated files
            if shard.stat().st_size < 8:
                raise ValueError("file too small")
        except Exception as exc:  # safetensors raises its own error types
            raise SlimdeployError(f"corrupt safetensors file {shard}: {exc}; re-download or re-export it") from None


def load_model(
    spec: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    with_tokenizer: bool = True,
) -> Loaded:
    """Load a causal LM (and tokenizer) from a directory, hub id, .gguf file or the embedded demo (None)."""
    if spec is not None and spec.startswith("shape:"):
        from slimdeploy.zoo.shapes import shape_model

        model = shape_model(spec.split(":", 1)[1])
        if dtype not in ("auto", "fp32"):
            model.to(torch_dtype(dtype))
        return Loaded(model=model, tokenizer=None, source=spec, kind="shape")
    kind, location = resolve_source(spec)
    td = torch_dtype(dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": td, "trust_remote_code": trust_remote_code}
    if kind in ("dir", "demo"):
        path = Path(location)
        _check_config(path)
        _check_safetensors(path)
        from slimdeploy.prune.io import load_per_layer, load_record

        if "slimdeploy_layer_widths" in json.loads((path / "config.json").read_text()):
            model = load_per_layer(path, td)
            tok = AutoTokenizer.from_pretrained(location) if with_tokenizer else None
            loaded = Loaded(model=model, tokenizer=tok, source=location, kind=kind)
        else:
            loaded = _load(AutoModelForCausalLM, AutoTokenizer, location, kind, with_tokenizer, kwargs)
        loaded.model.slimdeploy_record = load_record(path)
        return loaded
    if kind == "gguf":
        from slimdeploy.load.gguf import load_gguf

        return load_gguf(Path(location), td, with_tokenizer)
    # hub id: the local cache first, then the hub unless offline; either failure is one line.
    try:
        return _load(
            AutoModelForCausalLM, AutoTokenizer, location, kind, with_tokenizer, {**kwargs, "local_files_only": True}
        )
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise SlimdeployError(_hub_hint(location)) from None
    try:
        return _load(AutoModelForCausalLM, AutoTokenizer, location, kind, with_tokenizer, kwargs)
    except Exception:
        raise SlimdeployError(_hub_hint(location)) from None


def _hub_hint(model_id: str) -> str:
    return (
        f"model {model_id!r} is not in the local Hugging Face cache and the hub cannot be reached: run "
        f"`hf download {model_id}` on a connected machine, or pass a local model directory"
    )


def _load(auto_model, auto_tok, location: str, kind: str, with_tokenizer: bool, kwargs: dict) -> Loaded:
    try:
        model = auto_model.from_pretrained(location, **kwargs)
    except ValueError as exc:
        msg = str(exc).splitlines()[0]
        if "trust_remote_code" in msg:
            raise SlimdeployError(
                f"{location} needs its own modeling code; pass --trust-remote-code if you trust it"
            ) from None
        if "Unrecognized configuration" in msg or "not supported" in msg or "does not recognize" in msg:
            raise SlimdeployError(f"unsupported architecture in {location}: {msg}") from None
        raise
    model.eval()
    tokenizer = None
    if with_tokenizer:
        tok_kwargs = {k: v for k, v in kwargs.items() if k in ("trust_remote_code", "local_files_only")}
        tokenizer = auto_tok.from_pretrained(location, **tok_kwargs)
    return Loaded(model=model, tokenizer=tokenizer, source=location, kind=kind)
