"""References to functions by "module:attribute", imported on first use (keeps registries torch-free)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def resolve_ref(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
