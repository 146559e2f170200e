"""The recipe's stages, one function each: run(state, config, ctx) -> StageResult, registered by config class.

A new stage kind: a config class in recipe/schema.py (added to its `Stage` union) and a function here
decorated with `@stage(ThatConfig)`. The runner (runner.py) only loops over the recipe and calls these.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.api import run_export  # light: each exporter imports its runtime lazily
from slimdeploy.load.checkpoint import save_model
from slimdeploy.pipeline.state import PipelineState, StageContext, StageResult
from slimdeploy.recipe.schema import (
    BenchStage,
    EvalStage,
    ExportStage,
    MergeStage,
    PruneStage,
    QuantizeStage,
    RecoverStage,
)

StageFn = Callable[[PipelineState, Any, StageContext], StageResult]  # Any: each takes its own config
STAGES: dict[type, StageFn] = {}


def stage(config_class: type) -> Callable[[StageFn], StageFn]:
    def register(fn: StageFn) -> StageFn:
        STAGES[config_class] = fn
        return fn

    return register


def stage_function(config: object) -> StageFn:
    if type(config) not in STAGES:
        raise SlimdeployError(f"no stage is registered for {type(config).__name__}; known: {sorted(map(str, STAGES))}")
    return STAGES[type(config)]


@stage(PruneStage)
def prune_stage(state: PipelineState, cfg: PruneStage, ctx: StageContext) -> StageResult:
    from slimdeploy.prune.stage import prune_loaded

    report, state.record = prune_loaded(state, cfg, ctx.progress, state.record)
    state.pruned = True
    return StageResult("prune", {k: v for k, v in report.items() if k != "config"})


@stage(RecoverStage)
def recover_stage(state: PipelineState, cfg: RecoverStage, ctx: StageContext) -> StageResult:
    from slimdeploy.recover.train import recover
    from slimdeploy.utils.distributed import is_main

    if cfg.kd_weight > 0 and state.teacher is None:
        raise SlimdeployError("distillation needs the unpruned teacher, which was not kept; re-run from scratch")
    teacher = state.teacher if cfg.kd_weight > 0 else None
    topk_dir, teacher_report = None, None
    if teacher is not None and cfg.teacher_topk:
        teacher_report = _cache_teacher(state, cfg, ctx)
        teacher, topk_dir = None, ctx.work / "teacher_topk"
    result = recover(state.model, state.tokenizer, cfg, teacher, ctx.work, ctx.progress, teacher_topk_dir=topk_dir)
    if teacher_report:
        result.report["teacher"] = teacher_report
    state.adapter, state.pending_plan = result.model, result.pending_plan
    if is_main():  # under torchrun every rank holds the same adapter: rank 0 writes it
        state.adapter.save_pretrained(ctx.work / "adapter")
    return StageResult("recover", result.report)


def _cache_teacher(state: PipelineState, cfg: RecoverStage, ctx: StageContext) -> dict:
    """The teacher's top-k logits for every batch of this stage, on disk; then the teacher is freed unless a
    later recover stage distils from the model itself."""
    from slimdeploy.recover.data import DataMixture
    from slimdeploy.recover.teacher_cache import cache_teacher_topk, recovery_batches
    from slimdeploy.utils.distributed import world

    rank, n = world()
    batches = recovery_batches(DataMixture.build(state.tokenizer, cfg), cfg, rank, n)
    report = cache_teacher_topk(state.teacher, batches, cfg.teacher_topk, ctx.work / "teacher_topk", rank)
    here = next(i for i, s in enumerate(ctx.recipe.stages) if s is cfg)
    later = ctx.recipe.stages[here + 1 :]
    if not any(isinstance(s, RecoverStage) and s.kd_weight > 0 and not s.teacher_topk for s in later):
        state.teacher = None  # training runs without the teacher in memory
    return report


@stage(MergeStage)
def merge_stage(state: PipelineState, cfg: MergeStage, ctx: StageContext) -> StageResult:
    """Fold the adapters in (merge checks merged == adapter model), then slice away the groups that training
    zeroed (checked the same way: removing a zero group changes nothing)."""
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


@torch.no_grad()
def _slice_pending(state: PipelineState, probe: torch.Tensor, atol: float) -> tuple[int, float]:
    from slimdeploy.prune.apply import apply_plan

    before = state.model(input_ids=probe, use_cache=False).logits.float()
    state.record = apply_plan(state.model, state.pending_plan, state.record)
    state.pending_plan = None
    after = state.model(input_ids=probe, use_cache=False).logits.float()
    diff, scale = (after - before).abs().max().item(), before.abs().max().item()
    if diff > atol * max(1.0, scale):
        raise SlimdeployError(f"slicing the zeroed groups changed the logits by {diff:.3g}; this is a bug")
    return sum(p.numel() for p in state.model.parameters()), diff


@stage(QuantizeStage)
def quantize_stage(state: PipelineState, cfg: QuantizeStage, ctx: StageContext) -> StageResult:
    """Quantize the current model, write the compressed-tensors checkpoint, and continue with that checkpoint
    as transformers runs it (dequantized weights, W8A8's per-token int8 activations): later evals measure
    the quantized model, exports and benches serve its files."""
    from slimdeploy.load.data import calibration_data
    from slimdeploy.load.model import load_model
    from slimdeploy.quantize.apply import quantize_model, write_checkpoint

    batches = None
    if cfg.method == "gptq":
        batches, _ = calibration_data(state.tokenizer, cfg.data, cfg.n_samples, cfg.seq_len, cfg.seed)
    scales, details = quantize_model(state.model, cfg, batches, ctx.progress)
    dest = _fresh(ctx.work / "quantized")
    write_checkpoint(state.model, scales, cfg, dest)
    state.model = load_model(str(dest), ctx.recipe.dtype, with_tokenizer=False, device=ctx.device).model
    details["weight_file_bytes"] = sum(f.stat().st_size for f in dest.glob("*.safetensors"))
    details["scheme"] = {"weights": f"int{cfg.bits}", "group_size": cfg.groups, "format": cfg.format}
    shutil.rmtree(dest)
    state.quantized = cfg.scheme
    return StageResult("quantize", details)


@stage(EvalStage)
def eval_stage(state: PipelineState, cfg: EvalStage, ctx: StageContext) -> StageResult:
    from slimdeploy.evaluate.api import evaluate_loaded

    args = {"context_length": cfg.context_length, "stride": cfg.stride}
    data = cfg.data or ctx.recipe.eval_data
    r = evaluate_loaded(
        state.current, state.tokenizer, data, args, cfg.max_tokens, progress=ctx.progress, protocol_name=cfg.protocol
    )
    r["label"] = state.label
    if cfg.tasks:
        from slimdeploy.evaluate.zeroshot import zero_shot

        task_data = Path(cfg.task_data) if cfg.task_data else None
        r["zero_shot"] = zero_shot(
            state.current, state.tokenizer, cfg.tasks, task_data, cfg.limit, cfg.batch_size, ctx.recipe.seed
        )
    return StageResult("eval", r)


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    return folder


@stage(ExportStage)
def export_stage(state: PipelineState, cfg: ExportStage, ctx: StageContext) -> StageResult:
    """Export the current model into .partial/exports/<format> (moved into the output at the end)."""
    src = _fresh(ctx.work / "export_src")
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


@stage(BenchStage)
def bench_stage(state: PipelineState, cfg: BenchStage, ctx: StageContext) -> StageResult:
    """The unpruned model against the current one, interleaved; full report in bench/."""
    import copy

    from slimdeploy.load.model import load_model
    from slimdeploy.serve.bench import BenchConfig, bench_torch
    from slimdeploy.serve.report import write_bench

    bcfg = BenchConfig(
        input_len=cfg.input_len,
        output_len=cfg.output_len,
        concurrency=cfg.concurrency,
        repeats=cfg.repeats,
        dtype=cfg.dtype,
    )
    if cfg.backend == "torch":
        baseline = load_model(ctx.model_spec, "fp32", with_tokenizer=False, device=ctx.device).model
        report = bench_torch({"baseline": baseline, "candidate": copy.deepcopy(state.model)}, bcfg, ctx.progress)
    else:
        report = _bench_in_workers(state, cfg.backend, bcfg, ctx)
    if report.get("partial"):
        write_bench(report, ctx.work / "bench-partial")
        raise SlimdeployError(f"bench stage stopped early: {report['error']}")
    write_bench(report, ctx.work / "bench")
    models = report["models"]
    details = {
        "backend": cfg.backend,
        "path": "bench/bench.json",
        "vs_baseline": models["candidate"]["vs_baseline"],
        "output_tok_s": {
            n: {c: v["output_tok_s"]["median"] for c, v in m["concurrency"].items()} for n, m in models.items()
        },
        "tpot_ms": {
            n: {c: v["tpot_s"]["p50"]["median"] * 1e3 for c, v in m["concurrency"].items()} for n, m in models.items()
        },
    }
    return StageResult("bench", details)


def _bench_in_workers(state: PipelineState, backend: str, bcfg, ctx: StageContext) -> dict:
    """Other runtimes load from disk: save the current model, resolve the baseline's directory."""
    from slimdeploy.load.model import resolve_source
    from slimdeploy.serve.backends import bench_backend

    kind, location = resolve_source(ctx.model_spec)
    if kind not in ("demo", "dir"):
        raise SlimdeployError(f"bench backend {backend} needs the baseline as a model directory, not a {kind} source")
    src, runtime = _fresh(ctx.work / "bench_src"), _fresh(ctx.work / "bench_runtime")
    save_model(state.model, state.tokenizer, src, state.record)
    try:
        return bench_backend({"baseline": Path(location), "candidate": src}, backend, bcfg, runtime, ctx.progress)
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
