"""Loaded: a model as a loader returns it (its own module so every loader can build one without cycles)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    source: str  # what the user asked for, resolved (path, hub id, gguf file)
    kind: str  # "demo" | "dir" | "hub" | "gguf" | "shape" (random weights, real shapes)
