"""The typed objects a recipe run passes between stages: state in, result out, context alongside.

Every stage is `run(state: PipelineState, config: <its stage config>, ctx: StageContext) -> StageResult`
(each kind's `run`, pipeline/kinds/). What the run knows about the model (what was pruned, the adapter being
trained, the plan still to slice, the teacher) lives here, never as attributes on the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slimdeploy.prune.plan import PrunePlan
    from slimdeploy.prune.record import PruneRecord
    from slimdeploy.recipe.schema import Recipe


@dataclass
class PipelineState:
    model: Any  # the current dense transformers model
    tokenizer: Any
    source: str  # what was loaded (path, hub id, gguf file)
    record: PruneRecord | None = None  # what the model keeps relative to the original (pruning.json)
    adapter: Any = None  # the PEFT model between recover and merge
    pending_plan: PrunePlan | None = None  # groups zeroed while training, sliced away after merge
    teacher: Any = None  # the unpruned model, for distillation
    pruned: bool = False
    recovered: bool = False
    quantized: str | None = None  # the scheme, once a quantize stage ran (the model is its checkpoint then)
    stages: list[dict] = field(default_factory=list)  # finished stages' results, as report.json lists them

    @property
    def current(self) -> Any:
        """The model as it computes now: the adapter model while one is pending."""
        return self.adapter if self.adapter is not None else self.model

    @property
    def label(self) -> str:
        base = "recovered" if self.recovered else "pruned" if self.pruned else "dense"
        return f"{base} {self.quantized}" if self.quantized else base


@dataclass
class StageContext:
    recipe: Recipe
    model_spec: str | None  # the baseline (the bench stage measures against it)
    work: Path  # the run's .partial folder: stages write their products here
    trust_remote_code: bool = False
    progress: Callable[..., Any] | None = None
    device: str = "cpu"  # where the run's models live (resolved: cpu, cuda, cuda:N)


@dataclass
class StageResult:
    """One finished stage. `details` are the stage's own numbers; the runner adds when, how long, how big."""

    kind: str
    details: dict[str, Any] = field(default_factory=dict)
    index: int = -1
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The one place a stage result becomes report.json / state.json content."""
        return {
            "kind": self.kind,
            "index": self.index,
            "seconds": round(self.seconds, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            **self.params,
            **self.details,
        }
