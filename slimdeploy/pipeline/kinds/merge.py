"""The merge stage kind: fold the LoRA adapters into dense weights, then slice what training zeroed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimdeploy.errors import SlimdeployError
from slimdeploy.pipeline.kinds.base import StageKind, register
from slimdeploy.pipeline.state import PipelineState, StageContext, StageResult
from slimdeploy.recipe.schema import MergeStage

if TYPE_CHECKING:
    import torch


@register
class Merge(StageKind):
    name = "merge"
    config = MergeStage

    def run(self, state: PipelineState, cfg: MergeStage, ctx: StageContext) -> StageResult:
        """merge() checks merged == adapter model; slicing the zeroed groups is checked the same way
        (removing a zero group changes nothing)."""
        import torch

        from slimdeploy.merge.api import merge

        probe = (torch.arange(1, 65).remainder(state.model.config.vocab_size - 1)[None] + 1).to(ctx.device)
        low_precision = any(p.dtype in (torch.bfloat16, torch.float16) for p in state.adapter.parameters())
        atol = cfg.atol if cfg.atol is not None else (2e-2 if low_precision else 1e-4)
        state.model, report = merge(state.adapter, probe, atol=atol)
        state.adapter = None
        report["sliced_to_params"] = None
        if state.pending_plan is not None:
            report["sliced_to_params"], report["slice_max_abs_diff"] = _slice_pending(state, probe, atol)
            state.pruned = True
        state.recovered = True
        return StageResult("merge", report)


def _slice_pending(state: PipelineState, probe: torch.Tensor, atol: float) -> tuple[int, float]:
    import torch

    from slimdeploy.prune.apply import apply_plan

    with torch.no_grad():
        before = state.model(input_ids=probe, use_cache=False).logits.float()
        state.record = apply_plan(state.model, state.pending_plan, state.record)
        state.pending_plan = None
        after = state.model(input_ids=probe, use_cache=False).logits.float()
    diff, scale = (after - before).abs().max().item(), before.abs().max().item()
    if diff > atol * max(1.0, scale):
        raise SlimdeployError(f"slicing the zeroed groups changed the logits by {diff:.3g}; this is a bug")
    return sum(p.numel() for p in state.model.parameters()), diff
