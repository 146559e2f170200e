"""The export stage kind: write the current model in a serving format, verified in its runtime."""

from __future__ import annotations

import shutil

from slimdeploy.errors import SlimdeployError
from slimdeploy.pipeline.kinds.base import PlanFacts, StageKind, register
from slimdeploy.pipeline.state import PipelineState, StageContext, StageResult
from slimdeploy.recipe.schema import ExportStage
from slimdeploy.utils.fs import fresh_dir


@register
class Export(StageKind):
    name = "export"
    products = ("exports",)
    scratch = ("export_src",)
    config = ExportStage

    def run(self, state: PipelineState, cfg: ExportStage, ctx: StageContext) -> StageResult:
        """Into .partial/exports/<format> (moved into the output at the end)."""
        from slimdeploy.export.api import run_export
        from slimdeploy.load.checkpoint import save_model

        src = fresh_dir(ctx.work / "export_src")
        save_model(state.model, state.tokenizer, src, state.record)
        dest = ctx.work / "exports" / cfg.format
        report = run_export(src, dest, cfg.format, cfg.dtype, cfg.tp_size, verify=cfg.verify, force=True)
        shutil.rmtree(src)
        details = {
            "format": cfg.format,
            "path": f"exports/{cfg.format}",
            "verification": report.get("verification"),
            "tensor_parallel": report.get("tensor_parallel"),
        }
        return StageResult("export", details)

    def check(self, i: int, cfg: ExportStage, facts: PlanFacts) -> None:
        where = f"stages[{i}] (export {cfg.format})"
        if facts.quantized is not None:
            if cfg.format != "vllm":
                raise SlimdeployError(
                    f"{where}: a quantized model exports as its compressed-tensors checkpoint for vLLM only; put "
                    "this export before the quantize stage"
                )
            if cfg.verify:
                from slimdeploy.pipeline.kinds.quantize import check_served_after_quantize

                check_served_after_quantize(where, facts.quantized)
        if facts.config is not None:
            from slimdeploy.export.feasibility import check_exportable

            try:
                check_exportable(facts.config, cfg.format, cfg.dtype, cfg.verify, facts.per_layer or None)
            except SlimdeployError as exc:
                raise SlimdeployError(f"{where}: {exc}") from None

    def artifact_lines(self, result: dict) -> list[str]:
        from slimdeploy.export.verify import verification_line

        v = result.get("verification")
        check = verification_line(v)
        if v and "atol" in v:
            check += f"; logits within atol {v['atol']} / rtol {v['rtol']} (max |diff| {v['max_abs_logit_diff']})"
        return [f"- export `{result['path']}`: {check}"]
