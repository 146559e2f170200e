"""Recipe schema: metadata + an ordered list of typed stages (discriminated on `kind`). Unknown keys fail."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.registry import export_formats, get_exporter
from slimdeploy.prune.config import PruneConfig
from slimdeploy.quantize.config import QuantizeConfig
from slimdeploy.recover.config import RecoverConfig


class PruneStage(PruneConfig):
    kind: Literal["prune"]


class RecoverStage(RecoverConfig):
    kind: Literal["recover"]


class QuantizeStage(QuantizeConfig):
    kind: Literal["quantize"]


class MergeStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["merge"]
    atol: float | None = Field(
        None,
        gt=0,
        description="max |merged - adapter| logits (compared in fp32), relative to the logit scale; default 1e-4 "
        "for fp32 weights, 2e-2 for bf16/fp16 weights (merging rounds each weight to 8 or 11 mantissa bits)",
    )


class EvalStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["eval"]
    data: str | None = Field(None, description="default: the recipe's eval_data, else the demo held-out split")
    context_length: int | None = Field(None, ge=2)
    stride: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(60000, ge=16, description="score at most this many tokens (None: all)")
    protocol: Literal["sliding", "wikitext2", "llm-pruner"] = Field(
        "sliding", description="sliding (ours) | wikitext2 (SparseGPT/SliceGPT) | llm-pruner (128-token windows)"
    )
    tasks: list[str] | None = Field(None, description="lm-eval zero-shot tasks on the model in memory")
    task_data: str | None = Field(None, description="offline: folder of <task>.jsonl in the hub schemas")
    limit: int | None = Field(None, ge=1, description="seeded subset of N documents per task")
    batch_size: int = Field(16, ge=1)

    @field_validator("tasks", mode="before")
    @classmethod
    def _comma_separated(cls, v):  # --set eval.tasks=arc_easy,piqa reads like the CLI's --tasks
        return [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v


class ExportStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["export"]
    format: str = Field(description=f"one of {', '.join(export_formats())} (export/registry.py)")
    dtype: Literal["fp32", "fp16", "bf16", "int4", "int8"] = Field(
        "fp32", description=f"per format: { {f: list(get_exporter(f).dtypes) for f in export_formats()} }"
    )
    tp_size: int = Field(1, ge=1, description="report tensor-parallel readiness for this size")
    verify: bool = Field(True, description="load the export in its runtime and compare greedy tokens")

    @model_validator(mode="after")
    def _dtype_fits_format(self):
        if self.format not in export_formats():
            raise ValueError(f"unknown export format {self.format!r}; choose one of {', '.join(export_formats())}")
        dtypes = list(get_exporter(self.format).dtypes)
        if self.dtype not in dtypes:
            raise ValueError(f"dtype {self.dtype} is not available for {self.format} exports: {dtypes}")
        return self


class BenchStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["bench"]
    backend: Literal["torch", "onnxruntime", "ort-genai", "vllm", "vllm-server"] = "torch"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    input_len: int = Field(64, ge=1)
    output_len: int = Field(32, ge=1)
    concurrency: list[int] = Field(default_factory=lambda: [1, 4])
    repeats: int = Field(3, ge=1)


Stage = Annotated[
    Union[PruneStage, RecoverStage, MergeStage, QuantizeStage, EvalStage, ExportStage, BenchStage],
    Field(discriminator="kind"),
]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    model: str | None = Field(None, description="default model; --model overrides; None: the embedded demo")
    eval_data: str | None = Field(None, description="default data of eval stages")
    seed: int = 0
    device: str = Field(
        "cpu", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="where every stage runs: auto | cpu | cuda[:N]"
    )
    dtype: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32",
        description="the weights every stage works in (bf16: half the memory, AMX on CPU; auto: the checkpoint's); "
        "statistics and curvature accumulate in fp32, LoRA weights stay fp32, the merge check compares in fp32",
    )
    stages: list[Stage] = Field(min_length=1)
    real_model: dict[str, Any] | None = Field(
        None, description="KIND.KEY: value budgets applied when the model has more than real_model_min_params"
    )
    real_model_min_params: int = Field(50_000_000, ge=0)


def check_order(recipe: Recipe) -> None:
    """Stage order rules, checked before any weights load.

    - `merge` must directly follow a `recover` (adapters are folded before anything else touches weights);
    - a `recover` must be merged before the recipe ends or before the next prune/export/bench;
    - `export` and `bench` need a model without pending adapters (they come after merge);
    - after `quantize` the weights are integer codes: no prune, recover or second quantize follows it."""
    pending = quantized = False
    for i, st in enumerate(recipe.stages):
        where = f"stages[{i}] ({st.kind})"
        if quantized and st.kind in ("prune", "recover", "quantize"):
            raise SlimdeployError(f"{where}: the model is quantized by then; move this stage before the quantize stage")
        quantized = quantized or st.kind == "quantize"
        if st.kind == "merge" and not pending:
            raise SlimdeployError(f"{where}: merge needs a recover stage directly before it")
        if pending and st.kind != "merge":
            raise SlimdeployError(f"{where}: the recover stage before it must be followed by merge")
        pending = st.kind == "recover"
    if pending:
        raise SlimdeployError("the last recover stage is never merged; add `- kind: merge` after it")
