"""The recover stage kind: LoRA training (distilled from the unpruned model) on the current model.

It owns its teacher: the unpruned model is loaded from the recipe's model when the first distilling stage
runs (so pruning never holds it beside the model), kept while a later recover stage distils from it, and
freed after its last use; with `teacher_topk` the teacher's top-k logits are cached on disk first and the
teacher is freed before training."""

from __future__ import annotations

from typing import Any

from slimdeploy.pipeline.kinds.base import PlanFacts, StageKind, register
from slimdeploy.pipeline.kinds.prune import check_per_layer
from slimdeploy.pipeline.state import PipelineState, StageContext, StageResult
from slimdeploy.recipe.schema import RecoverStage


@register
class Recover(StageKind):
    name = "recover"
    config = RecoverStage
    reads_text = True
    changes_weights = True
    data_parallel = True
    needs_tokenizer_in_preflight = True

    def run(self, state: PipelineState, cfg: RecoverStage, ctx: StageContext) -> StageResult:
        from slimdeploy.recover.train import recover
        from slimdeploy.utils.distributed import is_main

        teacher = None
        if cfg.kd_weight > 0:
            if state.teacher is None:
                state.teacher = load_teacher(ctx.model_spec, cfg, ctx.device, ctx.trust_remote_code)
            teacher = state.teacher
        topk_dir, teacher_report = None, None
        if teacher is not None and cfg.teacher_topk:
            teacher_report = _cache_teacher(state, cfg, ctx)
            teacher, topk_dir = None, ctx.work / "teacher_topk"
        if not _later_distils(cfg, ctx):
            state.teacher = None  # last use: nothing after this stage distils (`teacher` keeps it for training)
        result = recover(state.model, state.tokenizer, cfg, teacher, ctx.work, ctx.progress, teacher_topk_dir=topk_dir)
        if teacher_report:
            result.report["teacher"] = teacher_report
        state.adapter, state.pending_plan = result.model, result.pending_plan
        if is_main():  # under torchrun every rank holds the same adapter: rank 0 writes it
            state.adapter.save_pretrained(ctx.work / "adapter")
        return StageResult("recover", result.report)

    def models_beside(self, cfg: RecoverStage) -> int:
        return 1 if cfg.kd_weight > 0 and cfg.teacher_device == "same" else 0  # the teacher

    def check_data(self, cfg: RecoverStage, recipe: Any, tokenizer: Any) -> None:
        from slimdeploy.recover.data import pack_blocks, recovery_docs

        sources = cfg.data if isinstance(cfg.data, list) else [cfg.data]
        for source in sources:  # rendered with the model's chat template and packed now, as the stage will
            if source is not None:
                docs, _ = recovery_docs(
                    source, cfg.prompt_template, tokenizer=tokenizer, chat_template=cfg.chat_template
                )
                if tokenizer is not None:
                    pack_blocks(tokenizer, docs, cfg.seq_len)
        if cfg.kd_weight > 0 and cfg.teacher_device != "same":
            from slimdeploy.utils.device import resolve_device

            resolve_device(cfg.teacher_device, "recover.teacher_device")

    def check(self, i: int, cfg: RecoverStage, facts: PlanFacts) -> None:
        if cfg.prune is not None and cfg.prune.allocation == "global":
            facts.per_layer = True
        if facts.per_layer:
            check_per_layer(i, self.name, facts)

    def tokens(self, result: dict) -> int | None:
        return result.get("tokens")


def _later_distils(cfg: RecoverStage, ctx: StageContext) -> bool:
    here = next(i for i, s in enumerate(ctx.recipe.stages) if s is cfg)
    return any(isinstance(s, RecoverStage) and s.kd_weight > 0 for s in ctx.recipe.stages[here + 1 :])


def load_teacher(model_spec: str | None, cfg: RecoverStage, device: str, trust_remote_code: bool):
    """The unpruned model in the dtype and on the device `cfg` asks for (`same`: the student's `device`)."""
    from slimdeploy.load.model import load_model
    from slimdeploy.utils.device import native_bf16, resolve_device

    where = device if cfg.teacher_device == "same" else cfg.teacher_device
    where = resolve_device(where, "recover.teacher_device")  # before the teacher's weights are read
    dtype = cfg.teacher_dtype
    if dtype == "auto-bf16":
        dtype = "bf16" if native_bf16(where) else "fp32"
    teacher = load_model(model_spec, dtype, trust_remote_code, with_tokenizer=False, device=where).model
    return teacher.eval().requires_grad_(False)


def _cache_teacher(state: PipelineState, cfg: RecoverStage, ctx: StageContext) -> dict:
    """The teacher's top-k logits for every batch of this stage, on disk."""
    from slimdeploy.recover.data import DataMixture
    from slimdeploy.recover.teacher_cache import cache_teacher_topk, recovery_batches
    from slimdeploy.utils.distributed import world

    rank, n = world()
    batches = recovery_batches(DataMixture.build(state.tokenizer, cfg), cfg, rank, n)
    return cache_teacher_topk(state.teacher, batches, cfg.teacher_topk, ctx.work / "teacher_topk", rank)
