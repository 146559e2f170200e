"""Criteria registry (torch-free): names and what each criterion needs, checked before any weight loads.

A criterion is a function `fn(inputs: ScoreInputs) -> list[dict[kind, scores]]` (score/api.py). Built-ins
are declared here by "module:function" so that validating a recipe never imports torch; a new criterion
registers itself with the decorator:

    @register_criterion("my_norm", needs_data=False)
    def my_norm(inputs): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimdeploy.errors import SlimdeployError
from slimdeploy.utils.lazy import resolve_ref


@dataclass(frozen=True)
class Criterion:
    name: str
    needs_data: bool  # calibration text (so a tokenizer)
    needs_grad: bool = False  # backward passes through the model
    standardize_global: bool = False  # raw scores differ in scale across layers: z-score them for global
    impl: str | Callable[..., Any] = ""  # "module:function" (lazy) or the function itself

    def function(self) -> Callable[..., Any]:
        return resolve_ref(self.impl)


_REGISTRY: dict[str, Criterion] = {}


def register_criterion(
    name: str,
    *,
    needs_data: bool,
    needs_grad: bool = False,
    standardize_global: bool = False,
    impl: str | None = None,
):
    """Register `name`; as a decorator the decorated function is the implementation."""

    def add(fn: Callable[..., Any] | str) -> Any:
        if name in _REGISTRY and _REGISTRY[name].impl != fn:
            raise SlimdeployError(f"criterion {name!r} is already registered")
        _REGISTRY[name] = Criterion(name, needs_data, needs_grad, standardize_global, fn)
        return fn

    if impl is not None:
        add(impl)
        return None
    return add


def criterion_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_criterion(name: str) -> Criterion:
    if name not in _REGISTRY:
        raise SlimdeployError(f"unknown criterion {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


_API = "slimdeploy.score.api"
register_criterion("random", needs_data=False, impl=f"{_API}:random_criterion")
register_criterion("l1", needs_data=False, standardize_global=True, impl=f"{_API}:l1_criterion")
register_criterion("l2", needs_data=False, standardize_global=True, impl=f"{_API}:l2_criterion")
register_criterion("wanda", needs_data=True, standardize_global=True, impl=f"{_API}:wanda_criterion")
register_criterion("flap", needs_data=True, standardize_global=True, impl=f"{_API}:flap_criterion")
register_criterion("taylor", needs_data=True, needs_grad=True, impl=f"{_API}:taylor_criterion")
register_criterion("loraprune", needs_data=True, needs_grad=True, impl=f"{_API}:loraprune_criterion")
register_criterion("surgeon", needs_data=True, needs_grad=True, impl=f"{_API}:surgeon_criterion")
register_criterion(
    "surgeon_layerwise", needs_data=True, standardize_global=True, impl=f"{_API}:surgeon_layerwise_criterion"
)
