"""Exporter registry (torch-free): one entry per format, the optimum / torchao pattern.

Every exporter follows one contract:
- check(config, dtype, verify, per_layer): refuse, from config.json alone and before any work, what the
  format cannot represent or run here (one line each);
- export(model_dir, out, *, dtype, tp_size, verify, force) -> report: write the format into a temporary
  folder, verify it in its runtime (greedy tokens against transformers) unless verify is off, write
  export_report.json, and rename the folder into place (whole or not at all).

A new format registers with `register_exporter(...)`; `slimdeploy export --format`, the recipe schema and
the preflight read the formats and their dtypes from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimdeploy.errors import SlimdeployError
from slimdeploy.utils.lazy import resolve_ref


@dataclass(frozen=True)
class Exporter:
    name: str
    dtypes: tuple[str, ...]
    runtime: tuple[str, str]  # (module that runs/verifies it, pip name)
    export_impl: str | Callable[..., Any]
    check_impl: str | Callable[..., Any]
    runtime_builds: bool = False  # the runtime is needed to build the format, not only to verify it

    def export(self, model_dir, out, *, dtype: str, tp_size: int, verify: bool, force: bool) -> dict:
        return resolve_ref(self.export_impl)(model_dir, out, dtype=dtype, tp_size=tp_size, verify=verify, force=force)

    def check(self, config: dict, dtype: str, verify: bool, per_layer: bool) -> None:
        resolve_ref(self.check_impl)(config, dtype, verify, per_layer)


_REGISTRY: dict[str, Exporter] = {}


def register_exporter(exporter: Exporter) -> Exporter:
    if exporter.name in _REGISTRY and _REGISTRY[exporter.name] != exporter:
        raise SlimdeployError(f"export format {exporter.name!r} is already registered")
    _REGISTRY[exporter.name] = exporter
    return exporter


def export_formats() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_exporter(name: str) -> Exporter:
    if name not in _REGISTRY:
        raise SlimdeployError(f"unknown export format {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


_CHECKS = "slimdeploy.export.feasibility"
register_exporter(
    Exporter("vllm", ("fp32",), ("vllm", "vLLM"), "slimdeploy.export.vllm:export_vllm", f"{_CHECKS}:check_vllm")
)
register_exporter(
    Exporter(
        "onnx",
        ("fp32", "fp16", "bf16", "int8"),
        ("onnxruntime", "onnxruntime"),
        "slimdeploy.export.onnx:export_onnx",
        f"{_CHECKS}:check_onnx",
    )
)
register_exporter(
    Exporter(
        "ort-genai",
        ("fp32", "fp16", "int4"),
        ("onnxruntime_genai", "onnxruntime-genai"),
        "slimdeploy.export.ort_genai:export_ort_genai",
        f"{_CHECKS}:check_ort_genai",
        runtime_builds=True,
    )
)
