"""The prune stage kind: score, allocate and slice the current model (prune/), in memory."""

from __future__ import annotations

from typing import Any

from slimdeploy.errors import SlimdeployError
from slimdeploy.pipeline.kinds.base import PlanFacts, StageKind, register
from slimdeploy.pipeline.state import PipelineState, StageContext, StageResult
from slimdeploy.recipe.schema import PruneStage


def check_per_layer(i: int, kind: str, facts: PlanFacts) -> None:
    """Per-layer widths are saved as DeciLM files: a family that format cannot carry fails now."""
    if facts.config is None:
        return
    from slimdeploy.load.decilm_format import check_representable

    try:
        check_representable(facts.config)
    except SlimdeployError as exc:
        raise SlimdeployError(f"stages[{i}] ({kind}, allocation global): {exc}") from None


@register
class Prune(StageKind):
    name = "prune"
    config = PruneStage
    changes_weights = True

    def run(self, state: PipelineState, cfg: PruneStage, ctx: StageContext) -> StageResult:
        from slimdeploy.prune.stage import prune_loaded

        report, state.record = prune_loaded(state, cfg, ctx.progress, state.record)
        state.pruned = True
        return StageResult("prune", {k: v for k, v in report.items() if k != "config"})

    def needs_text(self, cfg: PruneStage) -> bool:  # data-free criteria read no text
        from slimdeploy.prune.stage import needs_text

        return needs_text(cfg)

    def models_beside(self, cfg: PruneStage) -> int:
        return 1 if cfg.reconstruct != "none" else 0  # the dense copy reconstruction fits to

    def check_data(self, cfg: PruneStage, recipe: Any, tokenizer: Any) -> None:
        if self.needs_text(cfg) and cfg.data is not None:
            from slimdeploy.load.data import load_texts

            load_texts(cfg.data, split="calibration")

    def check(self, i: int, cfg: PruneStage, facts: PlanFacts) -> None:
        if cfg.allocation == "global":
            facts.per_layer = True
        if facts.per_layer:
            check_per_layer(i, self.name, facts)

    def tokens(self, result: dict) -> int | None:
        cal = result.get("calibration")
        return cal.get("n_samples", 0) * cal.get("seq_len", 0) if cal else None
