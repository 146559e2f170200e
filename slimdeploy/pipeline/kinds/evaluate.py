"""The eval stage kind: perplexity (and lm-eval zero-shot tasks) of the model as it computes now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimdeploy.errors import SlimdeployError
from slimdeploy.pipeline.kinds.base import StageKind, register
from slimdeploy.pipeline.state import PipelineState, StageContext, StageResult
from slimdeploy.recipe.schema import EvalStage


@register
class Eval(StageKind):
    name = "eval"
    config = EvalStage
    reads_text = True

    def run(self, state: PipelineState, cfg: EvalStage, ctx: StageContext) -> StageResult:
        from slimdeploy.evaluate.api import evaluate_loaded

        args = {"context_length": cfg.context_length, "stride": cfg.stride}
        data = cfg.data or ctx.recipe.eval_data
        r = evaluate_loaded(
            state.current, state.tokenizer, data, args, cfg.max_tokens, progress=ctx.progress,
            protocol_name=cfg.protocol,
        )  # fmt: skip
        r["label"] = state.label
        if cfg.tasks:
            from slimdeploy.evaluate.zeroshot import zero_shot

            task_data = Path(cfg.task_data) if cfg.task_data else None
            r["zero_shot"] = zero_shot(
                state.current, state.tokenizer, cfg.tasks, task_data, cfg.limit, cfg.batch_size, ctx.recipe.seed
            )
        return StageResult("eval", r)

    def check_data(self, cfg: EvalStage, recipe: Any, tokenizer: Any) -> None:
        if cfg.tasks:
            from slimdeploy.evaluate.zeroshot import check_tasks

            check_tasks(cfg.tasks, Path(cfg.task_data) if cfg.task_data else None, cfg.limit)
        if cfg.protocol != "sliding":
            from slimdeploy.evaluate.protocols import wikitext_rows

            if not (cfg.data or recipe.eval_data):
                raise SlimdeployError(f"the eval stage's {cfg.protocol} protocol needs data: WikiText-2's raw test")
            wikitext_rows(cfg.data or recipe.eval_data)
        else:
            from slimdeploy.load.data import load_texts

            load_texts(cfg.data or recipe.eval_data, split="eval")

    def metric(self, result: dict) -> tuple[str, float] | None:
        return result["label"], result["ppl"]

    def section(self, results: list[dict]) -> list[str]:
        rows = [s for s in results if s.get("zero_shot")]
        if not rows:
            return []
        tasks = list(rows[0]["zero_shot"]["tasks"])
        lines = ["", "Zero-shot accuracy (lm-eval, acc +- stderr):", "", "| stage | " + " | ".join(tasks) + " | mean |"]
        lines.append("|---" * (len(tasks) + 2) + "|")
        for s in rows:
            zs = s["zero_shot"]
            cells = [f"{zs['tasks'][t]['acc']:.3f} +- {zs['tasks'][t]['acc_stderr']:.3f}" for t in tasks]
            lines.append(f"| {s['index']} ({s['label']}) | " + " | ".join(cells) + f" | {zs['mean_acc']:.3f} |")
        return lines
