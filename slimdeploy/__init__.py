"""slimdeploy: structured pruning, LoRA recovery, merge, export and serving benchmarks for causal LMs.

`import slimdeploy` stays light (no torch, no transformers): the stage functions load lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"; resolved on first access so the import stays cheap
_LAZY = {
    "load_model": "slimdeploy.load.model:load_model",
    "perplexity": "slimdeploy.evaluate.perplexity:perplexity",
    "PerplexityProtocol": "slimdeploy.evaluate.perplexity:PerplexityProtocol",
    "summarize": "slimdeploy.analyze.summary:summarize",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'slimdeploy' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name].split(":")
    return getattr(importlib.import_module(module), attr)
