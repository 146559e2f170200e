"""GGUF files through transformers' `gguf_file` loader, tolerating the quirks of real-world files.

Some GGUF files mark an absent special token with id 0xFFFFFFFF (or another id past the vocabulary);
transformers indexes the token list with it and crashes. While loading, the metadata reader is wrapped so
such ids are dropped (the token is treated as absent), and the loaded config's token ids are checked too.
The file itself is never modified.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from slimdeploy.errors import SlimdeployError

SPECIAL_KEYS = (
    "bos_token_id",
    "eos_token_id",
    "unknown_token_id",
    "padding_token_id",
    "sep_token_id",
    "cls_token_id",
    "mask_token_id",
    "eot_token_id",
    "eom_token_id",
)


def sanitize_metadata(metadata: dict) -> list[str]:
    """Drop special-token ids that point outside the token list; returns the keys dropped."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    n = len(tokens) if isinstance(tokens, list | tuple) else int(tokens) if isinstance(tokens, int) else None
    dropped = []
    for key in SPECIAL_KEYS:
        full = f"tokenizer.ggml.{key}"
        value = metadata.get(full)
        if value is None:
            continue
        if int(value) < 0 or int(value) >= 0xFFFFFFFF or (n is not None and int(value) >= n):
            del metadata[full]
            dropped.append(key)
    return dropped


@contextmanager
def tolerant_gguf_reader(dropped: list[str]):
    """Wrap transformers' GGUF metadata reader (both places it is looked up) with `sanitize_metadata`."""
    import transformers.integrations.gguf as pkg
    import transformers.integrations.gguf.reader as reader

    original = reader.read_gguf_metadata

    def read(path, *args, **kwargs):
        metadata, tensors = original(path, *args, **kwargs)
        dropped.extend(k for k in sanitize_metadata(metadata) if k not in dropped)
        return metadata, tensors

    saved_pkg = getattr(pkg, "read_gguf_metadata", None)
    reader.read_gguf_metadata = read
    pkg.read_gguf_metadata = read
    import transformers.modeling_gguf_pytorch_utils as conv

    saved_tqdm = getattr(conv, "tqdm", None)
    conv.tqdm = lambda it, *a, **k: it  # its dequantization bar would break one-line errors on stderr
    try:
        yield
    finally:
        if saved_tqdm is not None:
            conv.tqdm = saved_tqdm
        reader.read_gguf_metadata = original
        if saved_pkg is not None:
            pkg.read_gguf_metadata = saved_pkg


def drop_quantizer_state(model) -> None:
    """transformers dequantizes GGUF tensors into plain weights but keeps a GGUF quantizer on the model, which
    makes save_pretrained refuse. The weights are ordinary tensors: forget the quantizer so every stage
    that writes (prune, compress, export) works from GGUF input."""
    model.hf_quantizer = None
    for obj in (model, getattr(model, "model", None)):
        if obj is not None and getattr(obj, "is_quantized", False):
            obj.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.slimdeploy_dequantized_from = "gguf"


def load_gguf(path: Path, dtype, with_tokenizer: bool = True):
    """A GGUF file as a transformers model (dequantized to `dtype`) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimdeploy.load.loaded import Loaded

    dropped: list[str] = []
    td = torch.float32 if dtype == "auto" else dtype
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    where, name = str(path.parent), path.name
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # its dequantization bar would break one-line errors on stderr
        with tolerant_gguf_reader(dropped):
            config = AutoConfig.from_pretrained(where, gguf_file=name)
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the config reads ids on its own
                value = getattr(config, key, None)
                if isinstance(value, int) and not 0 <= value < config.vocab_size:
                    setattr(config, key, None)
                    dropped.append(key)
            model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, config=config, dtype=td)
            tok = AutoTokenizer.from_pretrained(where, gguf_file=name) if with_tokenizer else None
    except SlimdeployError:
        raise
    except Exception as exc:  # gguf and transformers raise many types (struct.error on truncated headers)
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise SlimdeployError(
            f"cannot load GGUF file {path} ({first}); check that the file is complete and its architecture "
            "and quantization type are ones transformers reads"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    drop_quantizer_state(model)
    model.eval()
    model.slimdeploy_gguf_dropped = sorted(set(dropped))
    return Loaded(model=model, tokenizer=tok, source=str(path), kind="gguf")
