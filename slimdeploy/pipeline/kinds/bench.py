"""The bench stage kind: the unpruned model against the current one, interleaved, in a serving backend."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.pipeline.kinds.base import PlanFacts, StageKind, register
from slimdeploy.pipeline.state import PipelineState, StageContext, StageResult
from slimdeploy.recipe.schema import BenchStage
from slimdeploy.utils.fs import fresh_dir


@register
class Bench(StageKind):
    name = "bench"
    products = ("bench",)
    scratch = ("bench_src", "bench_runtime", "bench-partial")
    config = BenchStage

    def run(self, state: PipelineState, cfg: BenchStage, ctx: StageContext) -> StageResult:
        """Full report in bench/ (bench.json, bench.png)."""
        from slimdeploy.load.model import load_model
        from slimdeploy.serve.bench import BenchConfig, bench_torch
        from slimdeploy.serve.report import write_bench

        bcfg = BenchConfig(
            input_len=cfg.input_len, output_len=cfg.output_len, concurrency=cfg.concurrency, repeats=cfg.repeats,
            dtype=cfg.dtype,
        )  # fmt: skip
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
                n: {c: v["tpot_s"]["p50"]["median"] * 1e3 for c, v in m["concurrency"].items()}
                for n, m in models.items()
            },
        }
        return StageResult("bench", details)

    def check(self, i: int, cfg: BenchStage, facts: PlanFacts) -> None:
        from slimdeploy.serve.backends import check_backend

        where = f"stages[{i}] (bench {cfg.backend})"
        if facts.quantized is not None:
            if cfg.backend not in ("vllm", "vllm-server"):
                raise SlimdeployError(
                    f"{where}: the {cfg.backend} backend would time a simulation of the quantized scheme, not a "
                    "serving speed; bench a quantized model with backend vllm"
                )
            from slimdeploy.pipeline.kinds.quantize import check_served_after_quantize

            check_served_after_quantize(where, facts.quantized)
        check_backend(cfg.backend)
        ctx_len = facts.config.get("max_position_embeddings", 1e9) if facts.config is not None else 1e9
        if cfg.input_len + cfg.output_len > ctx_len:
            raise SlimdeployError(
                f"stages[{i}] (bench): input_len + output_len = {cfg.input_len + cfg.output_len} exceeds "
                f"the model's context of {ctx_len} tokens"
            )
        if cfg.backend != "torch" and facts.model_kind not in ("dir", "demo"):
            raise SlimdeployError(f"{where} needs the baseline as a model directory, not a {facts.model_kind} source")

    def artifact_lines(self, result: dict) -> list[str]:
        parts = [
            f"concurrency {c}: decode {v['decode_speedup']:.2f}x (ideal {v['ideal_speedup']:.2f}x), throughput "
            f"{v['throughput_speedup']:.2f}x"
            for c, v in result["vs_baseline"].items()
        ]
        return [f"- bench (`{result['path']}`, {result['backend']} backend): " + "; ".join(parts)]

    def plots(self, results: list[dict]) -> list[str]:
        # the serving plot is drawn by the stage itself (write_bench), next to its bench.json
        return [str(Path(results[-1]["path"]).with_name("bench.png"))] if results else []


def _bench_in_workers(state: PipelineState, backend: str, bcfg, ctx: StageContext) -> dict:
    """Other runtimes load from disk: save the current model, resolve the baseline's directory."""
    from slimdeploy.load.checkpoint import save_model
    from slimdeploy.load.model import resolve_source
    from slimdeploy.serve.backends import bench_backend

    kind, location = resolve_source(ctx.model_spec)
    if kind not in ("demo", "dir"):
        raise SlimdeployError(f"bench backend {backend} needs the baseline as a model directory, not a {kind} source")
    src, runtime = fresh_dir(ctx.work / "bench_src"), fresh_dir(ctx.work / "bench_runtime")
    save_model(state.model, state.tokenizer, src, state.record)
    try:
        return bench_backend({"baseline": Path(location), "candidate": src}, backend, bcfg, runtime, ctx.progress)
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
