"""What a recipe stage kind is: one object that owns its checks, its run and how its result is reported.

The runner (pipeline/runner.py), the preflight (pipeline/preflight.py) and the reports (pipeline/report.py)
loop over the recipe's stages and ask each one's kind; none of them names a kind. The kind's config type is
its pydantic class in recipe/schema.py (kept there, torch-free, so a recipe validates without importing the
machinery); the kind object refers to it.

A new kind: a config class in recipe/schema.py, a module in pipeline/kinds/ with a `StageKind` subclass
decorated `@register`, and its import line in pipeline/kinds/__init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from slimdeploy.errors import SlimdeployError

if TYPE_CHECKING:
    from slimdeploy.pipeline.state import PipelineState, StageContext, StageResult
    from slimdeploy.recipe.schema import Recipe


@dataclass
class PlanFacts:
    """What the preflight knows while it walks the recipe top to bottom (each kind's `check` reads and
    updates it): the model's source kind and config.json (None where only loading can tell), whether the
    widths are per layer by now, and the quantize stage that ran before, if any."""

    model_kind: str
    config: dict | None
    per_layer: bool = False
    quantized: Any = None


class StageKind:
    """One recipe stage kind. Subclasses set `name` and `config` and implement `run`; every other hook has a
    default that does nothing, so a kind states only what it needs."""

    name: ClassVar[str]
    config: ClassVar[type]
    reads_text: ClassVar[bool] = False  # the stage reads text, so the model needs tokenizer files
    changes_weights: ClassVar[bool] = False  # refused on a model that is quantized already
    data_parallel: ClassVar[bool] = False  # under torchrun the other ranks join this stage (utils/distributed)
    needs_tokenizer_in_preflight: ClassVar[bool] = False  # its data is rendered with the tokenizer to check it
    products: ClassVar[tuple[str, ...]] = ()  # folders it writes in the work dir that travel into the output
    scratch: ClassVar[tuple[str, ...]] = ()  # its temporaries in the work dir, removed after a killed run

    def run(self, state: PipelineState, cfg: Any, ctx: StageContext) -> StageResult:
        raise NotImplementedError

    # preflight: nothing here may load weights
    def needs_text(self, cfg: Any) -> bool:
        return self.reads_text

    def models_beside(self, cfg: Any) -> int:
        """Further copies of the model this stage holds while it runs (a teacher, a dense reference)."""
        return 0

    def check_data(self, cfg: Any, recipe: Recipe, tokenizer: Any) -> None:
        """Read and parse the stage's data now, so a bad file fails before any stage runs."""

    def check(self, i: int, cfg: Any, facts: PlanFacts) -> None:
        """Refuse, in one line naming `stages[i]`, what this stage cannot do given what comes before it."""

    # reports: `result` is the stage's entry in report.json
    def metric(self, result: dict) -> tuple[str, float] | None:
        """(label, perplexity) for the summary, the stage table and the per-stage plot; None: not measured."""
        return None

    def artifact_lines(self, result: dict) -> list[str]:
        """report.md lines for what the stage produced (exports, benchmarks)."""
        return []

    def tokens(self, result: dict) -> int | None:
        """Tokens the stage consumed (calibration or training), for the budget line."""
        return None

    def section(self, results: list[dict]) -> list[str]:
        """A report.md section over every result of this kind (e.g. the zero-shot table)."""
        return []

    def plots(self, results: list[dict]) -> list[str]:
        """Plot files this kind's results drew into the output (relative paths)."""
        return []


KINDS: dict[type, StageKind] = {}


def register(cls: type[StageKind]) -> type[StageKind]:
    if cls.config in KINDS and type(KINDS[cls.config]) is not cls:
        raise SlimdeployError(f"a stage kind is already registered for {cls.config.__name__}")
    KINDS[cls.config] = cls()
    return cls


class _NoKind(StageKind):
    name = "load"


NO_KIND = _NoKind()
