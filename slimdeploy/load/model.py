"""Model loading in one place: local directory, hub id (local cache first), GGUF file, or the embedded demo.

Never unpickles: transformers reads safetensors, and legacy .bin files only with `weights_only=True`.
Never runs repository code unless the caller passes `trust_remote_code=True`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from slimdeploy.errors import SlimdeployError
from slimdeploy.load.checkpoint import check_finite
from slimdeploy.load.loaded import Loaded
from slimdeploy.zoo.registry import DEMO_NAME, demo_model_dir  # the embedded demo ships with the zoo

DTYPES = ("auto", "fp32", "bf16", "fp16")


def torch_dtype(name: str):
    import torch

    table = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise SlimdeployError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return table[name]


def resolve_source(spec: str | None, fetch: bool = True) -> tuple[str, str]:
    """Say what `spec` is without loading anything: (kind, location). A zoo model is fetched and converted on
    first use; with `fetch` False (dry runs) an uncached one is ("zoo", spec) and nothing is fetched."""
    if spec is None or spec == DEMO_NAME:
        path = demo_model_dir()
        if not (path / "model.safetensors").exists():
            raise SlimdeployError(
                f"the embedded model {DEMO_NAME} is missing from {path}; reinstall slimdeploy or rebuild it "
                "with `slimdeploy zoo train-demo`"
            )
        return "demo", str(path)
    if spec.startswith("zoo:"):
        from slimdeploy.zoo.registry import entry, is_cached, resolve

        name = spec.removeprefix("zoo:")
        if not fetch and entry(name).package is not None and not is_cached(name):
            return "zoo", spec
        location = resolve(spec)
        return ("demo" if location == demo_model_dir() else "dir"), str(location)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise SlimdeployError(f"{spec} is a file but not a .gguf model; pass a model directory or a .gguf file")
        return "gguf", str(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise SlimdeployError(f"{spec} is not a model directory (no config.json); pass a Hugging Face model folder")
        return "dir", str(path)
    parent = path.parent
    looks_like_path = (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or os.sep + os.sep in spec
        or (str(parent) not in ("", ".") and parent.exists())
        or spec.endswith((".gguf", ".safetensors", ".json"))
    )
    if looks_like_path or not spec.strip():
        raise SlimdeployError(f"model path {spec} does not exist; pass an existing directory, .gguf file or hub id")
    return "hub", spec


def check_config(path: Path) -> None:
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


def check_safetensors(path: Path) -> None:
    """Open every shard's header so a truncated or corrupt file fails here with a clear message; an index
    naming shards that are not there fails too."""
    from safetensors import safe_open

    from slimdeploy.load.onload import index_weight_map

    index_weight_map(path)
    shards = sorted(path.glob("*.safetensors"))
    if not shards and (list(path.glob("*.bin")) or list(path.glob("*.pt")) or list(path.glob("*.pth"))):
        raise SlimdeployError(
            f"{path} holds only pickle weights (*.bin), which slimdeploy does not load (a pickle can run code); "
            "convert it once in a trusted environment: AutoModelForCausalLM.from_pretrained(DIR)"
            ".save_pretrained(NEW_DIR, safe_serialization=True)"
        )
    if not shards:
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
    if (path / "config.json").is_file():
        check_layer_count(path)


def load_model(
    spec: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    with_tokenizer: bool = True,
    device: str = "cpu",
) -> Loaded:
    """Load a causal LM (and tokenizer) from a directory, hub id, .gguf file or the embedded demo (None), in
    `dtype` (weights keep it: a bf16 model is not upcast), on `device` (auto | cpu | cuda[:N]).

    Refuses what would load silently wrong: missing or unexpected weights, non-finite weights, pickle-only
    folders, foreign Python code without the flag. A folder without tokenizer files loads with tokenizer
    None: stages that need text say so (`require_tokenizer`)."""
    from slimdeploy.utils.device import check_dtype, resolve_device

    device = resolve_device(device)  # an impossible device or dtype fails before any weight is read
    check_dtype(dtype)
    loaded = _load_on_cpu(spec, dtype, trust_remote_code, with_tokenizer)
    if device != "cpu":
        loaded.model.to(device)
    return loaded


def _load_on_cpu(spec: str | None, dtype: str, trust_remote_code: bool, with_tokenizer: bool) -> Loaded:
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
        check_config(path)
        check_safetensors(path)
        from slimdeploy.load.checkpoint import load_per_layer
        from slimdeploy.utils.trust import remote_code_allowed

        kwargs["trust_remote_code"] = remote_code_allowed(path, trust_remote_code)
        if "slimdeploy_layer_widths" in json.loads((path / "config.json").read_text()):
            model = load_per_layer(path, td)
            tok = _tokenizer(AutoTokenizer, location, {}) if with_tokenizer else None
            loaded = Loaded(model=model, tokenizer=tok, source=location, kind=kind)
        else:
            loaded = _load(AutoModelForCausalLM, AutoTokenizer, location, kind, with_tokenizer, kwargs)
        check_finite(loaded.model, location)
        return loaded
    if kind == "gguf":
        from slimdeploy.load.gguf import load_gguf

        loaded = load_gguf(Path(location), td, with_tokenizer)
        check_finite(loaded.model, location)
        return loaded
    # hub id: the local cache first, then the hub unless offline or unreachable; either failure is one line.
    try:
        loaded = _load(
            AutoModelForCausalLM, AutoTokenizer, location, kind, with_tokenizer, {**kwargs, "local_files_only": True}
        )
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
            raise SlimdeployError(_hub_hint(location)) from None
        try:
            loaded = _load(AutoModelForCausalLM, AutoTokenizer, location, kind, with_tokenizer, kwargs)
        except SlimdeployError:
            raise
        except Exception:
            raise SlimdeployError(_hub_hint(location)) from None
    check_finite(loaded.model, location)
    return loaded


def source_config(spec: str | None) -> tuple[str, dict] | None:
    """(location, config.json as slimdeploy reads it) of a local model folder, read leniently: None for other
    sources and for a missing or broken file (the loader names those). For checks made before weights load."""
    from slimdeploy.load.decilm_format import logical_config

    kind, location = resolve_source(spec)
    path = Path(location) / "config.json"
    if kind not in ("dir", "demo") or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return (location, logical_config(config)) if isinstance(config, dict) else None


def _compressed_tensors(location: str) -> bool:
    path = Path(location) / "config.json"
    try:
        qc = json.loads(path.read_text()).get("quantization_config") if path.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors"


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub's endpoint, no retries: an unreachable hub is known in seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_hint(model_id: str) -> str:
    return (
        f"{model_id!r} is neither a local path (no such file or directory) nor a model in the local Hugging Face "
        f"cache, and the hub cannot be reached: fix the path, or run `hf download {model_id}` on a connected machine"
    )


def require_tokenizer(tokenizer, stage: str, source: str = "the model") -> None:
    if tokenizer is None:
        alternative = ", or use a data-free criterion (l1, l2, random)" if "criterion" in stage else ""
        raise SlimdeployError(
            f"the {stage} needs text, and {source} has no tokenizer files; add the tokenizer "
            f"(tokenizer.json / tokenizer_config.json) to the model folder{alternative}"
        )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer_files(path: Path) -> bool:
    return any((Path(path) / f).exists() for f in TOKENIZER_FILES)


def load_tokenizer(location: str, trust_remote_code: bool = False):
    """The tokenizer of a local model folder alone (None when it has none): for stages that read weights
    themselves (sequential pruning)."""
    from transformers import AutoTokenizer

    return _tokenizer(AutoTokenizer, location, {"trust_remote_code": trust_remote_code, "local_files_only": True})


def _tokenizer(auto_tok, location: str, kwargs: dict):
    """The folder's tokenizer, or None when it has no tokenizer files (shape-only, weights-only checkpoints)."""
    path = Path(location)
    if path.is_dir() and not has_tokenizer_files(path):
        return None
    try:
        return auto_tok.from_pretrained(location, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        if not path.is_dir():
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SlimdeployError(
            f"cannot load the tokenizer in {location} ({first}); repair or replace its files"
        ) from None


def _load(auto_model, auto_tok, location: str, kind: str, with_tokenizer: bool, kwargs: dict) -> Loaded:
    if _compressed_tensors(location):
        # decompressed at load: compressed-tensors otherwise decompresses on the first call of the model's
        # top-level forward, and our scoring calls the decoder directly. The modules keep the scheme
        # (W8A8's activations are still quantized per token in forward): the model computes as quantized.
        from transformers import CompressedTensorsConfig

        kwargs = {**kwargs, "quantization_config": CompressedTensorsConfig(dequantize=True)}
    try:
        with warnings.catch_warnings():  # "loading attributes will be overwritten": that is the point
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            model, info = auto_model.from_pretrained(location, output_loading_info=True, **kwargs)
    except ValueError as exc:
        msg = str(exc).splitlines()[0]
        if "trust_remote_code" in msg:
            raise SlimdeployError(
                f"{location} needs its own modeling code; pass --trust-remote-code if you trust it"
            ) from None
        if "Unrecognized configuration" in msg or "not supported" in msg or "does not recognize" in msg:
            raise SlimdeployError(f"unsupported architecture in {location}: {msg}") from None
        raise SlimdeployError(f"cannot load {location}: {msg}") from None
    except RuntimeError:  # size mismatches between config and weights
        raise SlimdeployError(
            f"the tensor shapes in {location} differ from what its config.json describes; fix the config "
            "(head_dim, num_attention_heads, num_key_value_heads, intermediate_size) or re-export the model"
        ) from None
    missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
    mismatched = info.get("mismatched_keys") or []
    if missing or unexpected or mismatched:
        parts = [
            f"{what} {sorted(keys)[:3]}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
            if keys
        ]
        raise SlimdeployError(
            f"the weights in {location} do not match its config.json ({'; '.join(parts)}); "
            "fix the config (e.g. num_hidden_layers) or re-export the model"
        )
    model.eval()
    tokenizer = None
    if with_tokenizer:
        tok_kwargs = {k: v for k, v in kwargs.items() if k in ("trust_remote_code", "local_files_only")}
        tokenizer = _tokenizer(auto_tok, location, tok_kwargs)
    return Loaded(model=model, tokenizer=tokenizer, source=location, kind=kind)


def safetensors_headers(model_dir: Path) -> dict[str, dict]:
    """Every tensor's header entry (dtype, shape, offsets) over a folder's shards; nothing else is read. Each
    header's claimed length is checked against its file before that many bytes are read."""
    import struct

    out: dict[str, dict] = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        size = shard.stat().st_size
        with open(shard, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < n <= size - 8:
                raise SlimdeployError(
                    f"corrupt safetensors file {shard}: its header claims {n} bytes of a {size}-byte file; "
                    "re-download or re-export it"
                )
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise SlimdeployError(f"corrupt safetensors file {shard}: unreadable header; re-export it") from None
        if not isinstance(header, dict):
            raise SlimdeployError(f"corrupt safetensors file {shard}: unreadable header; re-export it")
        out |= {k: v for k, v in header.items() if k != "__metadata__"}
    return out


def safetensors_params(model_dir: Path) -> int:
    """Parameter count from the safetensors headers (no weights read)."""
    total = 0
    for meta in safetensors_headers(model_dir).values():
        count = 1
        for d in meta.get("shape", []):
            count *= d
        total += count
    return total


def check_layer_count(path: Path) -> None:
    """config.json's layer count against the layers the weights hold, before a model is built from it (a
    config claiming a million layers would allocate until memory runs out)."""
    from slimdeploy.load.decilm_format import logical_config

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # check_config names it
    if not isinstance(config, dict):
        return
    claimed = logical_config(config).get("num_hidden_layers")
    names = [k.split(".") for k in safetensors_headers(path) if k.startswith("model.layers.")]
    layers = {int(parts[2]) for parts in names if len(parts) > 2 and parts[2].isdigit()}
    held = max(layers) + 1 if layers else 0
    if isinstance(claimed, int) and layers and claimed != held:
        raise SlimdeployError(
            f"{path / 'config.json'} says num_hidden_layers {claimed}, and the weights hold {held} layers: "
            "missing or extra layers; repair config.json or re-export the model"
        )


def params_on_disk(spec: str | None, fetch: bool = True) -> int | None:
    """Parameters of a model folder (the demo, a zoo model, a directory) without loading it; None otherwise.
    An uncached zoo model under `fetch` False: the parameter count its catalogue entry states."""
    if spec is not None and spec.startswith("shape:"):
        return None
    kind, location = resolve_source(spec, fetch)
    if kind == "zoo":
        from slimdeploy.zoo.registry import entry

        return int(float(entry(location.removeprefix("zoo:")).params.removesuffix("M")) * 1e6)
    return safetensors_params(Path(location)) if kind in ("dir", "demo") else None
