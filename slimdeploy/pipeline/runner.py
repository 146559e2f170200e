"""run(): a recipe's stages top to bottom, resumable, ending in one output directory renamed into place.

Work happens in `.<out>.partial/` beside the output. After every stage the current model (and, between
recover and merge, the adapter) and `state.json` are saved there, so re-running the same command continues
after the last finished stage. The output directory appears only when everything succeeded.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slimdeploy.analyze.summary import param_stats
from slimdeploy.errors import SlimdeployError
from slimdeploy.evaluate.samples import greedy_answers
from slimdeploy.export.api import run_export  # light: each exporter imports its runtime lazily
from slimdeploy.load.model import Loaded, load_model
from slimdeploy.pipeline.preflight import preflight
from slimdeploy.prune.io import save_model
from slimdeploy.recipe.loader import dump_recipe, recipe_hash
from slimdeploy.recipe.schema import Recipe
from slimdeploy.utils.fs import check_output, output_lock, write_marker
from slimdeploy.utils.memory import peak_rss_mb


@dataclass
class State:
    loaded: Loaded
    peft: object | None = None
    teacher: object | None = None
    pruned: bool = False
    recovered: bool = False
    stages: list[dict] = field(default_factory=list)


def _stage_prune(state: State, stage, recipe: Recipe, progress) -> dict:
    from slimdeploy.prune.api import PruneConfig
    from slimdeploy.prune.stage import prune_loaded

    cfg = PruneConfig.model_validate(stage.model_dump(exclude={"kind"}))
    report = prune_loaded(state.loaded, cfg, progress)
    state.pruned = True
    return {k: v for k, v in report.items() if k not in ("config",)}


def _stage_recover(state: State, stage, recipe: Recipe, progress, work: Path) -> dict:
    from slimdeploy.recover.config import RecoverConfig
    from slimdeploy.recover.train import recover

    cfg = RecoverConfig.model_validate(stage.model_dump(exclude={"kind"}))
    teacher = state.teacher if cfg.kd_weight > 0 else None
    if cfg.kd_weight > 0 and teacher is None:
        raise SlimdeployError("distillation needs the unpruned teacher, which was not kept; re-run from scratch")
    state.peft, report = recover(state.loaded.model, state.loaded.tokenizer, cfg, teacher, work, progress)
    state.peft.save_pretrained(work / "adapter")
    return report


def _stage_merge(state: State, stage, recipe: Recipe, progress) -> dict:
    from slimdeploy.merge.api import merge

    probe = torch.arange(1, 65).remainder(state.loaded.model.config.vocab_size - 1)[None] + 1
    state.loaded.model, report = merge(state.peft, probe, atol=stage.atol)
    state.peft = None
    state.pruned = state.pruned or report["sliced_to_params"] is not None
    state.recovered = True
    return report


def _stage_eval(state: State, stage, recipe: Recipe, progress) -> dict:
    from slimdeploy.evaluate.api import evaluate_loaded

    model = state.peft or state.loaded.model
    args = {"context_length": stage.context_length, "stride": stage.stride}
    r = evaluate_loaded(
        model,
        state.loaded.tokenizer,
        stage.data or recipe.eval_data,
        args,
        stage.max_tokens,
        progress=progress,
        protocol_name=stage.protocol,
    )
    r["label"] = "recovered" if state.recovered else "pruned" if state.pruned else "dense"
    if stage.tasks:
        from slimdeploy.evaluate.zeroshot import zero_shot

        task_data = Path(stage.task_data) if stage.task_data else None
        r["zero_shot"] = zero_shot(
            model, state.loaded.tokenizer, stage.tasks, task_data, stage.limit, stage.batch_size, recipe.seed
        )
    return r


def _stage_export(state: State, stage, recipe: Recipe, progress, work: Path) -> dict:
    """Export the current model into .partial/exports/<format> (moved into the output at the end)."""
    src = work / "export_src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir()
    save_model(state.loaded.model, state.loaded.tokenizer, src)
    dest = work / "exports" / stage.format
    report = run_export(src, dest, stage.format, stage.dtype, stage.tp_size, verify=stage.verify, force=True)
    shutil.rmtree(src)
    return {
        "format": stage.format,
        "path": f"exports/{stage.format}",
        "verification": report.get("verification"),
        "tensor_parallel": report.get("tensor_parallel"),
    }


def _stage_bench(state: State, stage, recipe: Recipe, progress, work: Path, model_spec) -> dict:
    """The unpruned model against the current one, interleaved; full report in bench/."""
    import copy

    from slimdeploy.serve.bench import BenchConfig, bench_torch
    from slimdeploy.serve.report import write_bench

    cfg = BenchConfig(
        input_len=stage.input_len,
        output_len=stage.output_len,
        concurrency=stage.concurrency,
        repeats=stage.repeats,
        dtype=stage.dtype,
    )
    if stage.backend == "torch":
        baseline = load_model(model_spec, "fp32", with_tokenizer=False).model
        report = bench_torch({"baseline": baseline, "candidate": copy.deepcopy(state.loaded.model)}, cfg, progress)
    else:
        report = _bench_in_workers(state, stage.backend, cfg, progress, work, model_spec)
    if report.get("partial"):
        write_bench(report, work / "bench-partial")
        raise SlimdeployError(f"bench stage stopped early: {report['error']}")
    write_bench(report, work / "bench")
    return {
        "backend": stage.backend,
        "path": "bench/bench.json",
        "vs_baseline": report["models"]["candidate"]["vs_baseline"],
        "output_tok_s": {
            n: {c: v["output_tok_s"]["median"] for c, v in m["concurrency"].items()}
            for n, m in report["models"].items()
        },
        "tpot_ms": {
            n: {c: v["tpot_s"]["p50"]["median"] * 1e3 for c, v in m["concurrency"].items()}
            for n, m in report["models"].items()
        },
    }


def _bench_in_workers(state: State, backend: str, cfg, progress, work: Path, model_spec) -> dict:
    """Other runtimes load from disk: save the current model, resolve the baseline's directory."""
    from slimdeploy.load.model import resolve_source
    from slimdeploy.serve.backends import bench_backend

    kind, location = resolve_source(model_spec)
    if kind not in ("demo", "dir"):
        raise SlimdeployError(f"bench backend {backend} needs the baseline as a model directory, not a {kind} source")
    src = work / "bench_src"
    runtime = work / "bench_runtime"
    for d in (src, runtime):
        if d.exists():
            shutil.rmtree(d)
    src.mkdir()
    runtime.mkdir()
    save_model(state.loaded.model, state.loaded.tokenizer, src)
    try:
        return bench_backend({"baseline": Path(location), "candidate": src}, backend, cfg, runtime, progress)
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)


def _save_state(work: Path, state: State, done: int, rhash: str) -> None:
    model_dir = work / "model.next"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir()
    save_model(
        state.loaded.model if state.peft is None else state.peft.base_model.model, state.loaded.tokenizer, model_dir
    )
    if (work / "model").exists():
        shutil.rmtree(work / "model")
    model_dir.rename(work / "model")
    meta = {
        "recipe_hash": rhash,
        "done": done,
        "pruned": state.pruned,
        "recovered": state.recovered,
        "adapter_pending": state.peft is not None,
        "stages": state.stages,
    }
    (work / "state.json.tmp").write_text(json.dumps(meta, indent=1, default=str))
    (work / "state.json.tmp").replace(work / "state.json")


def _resume(work: Path, rhash: str, trust: bool) -> tuple[State, int] | None:
    meta_path = work / "state.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta["recipe_hash"] != rhash:
        raise SlimdeployError(f"{work} holds an interrupted run of a different recipe/model; delete it or pass --force")
    loaded = load_model(str(work / "model"), "fp32", trust)
    state = State(loaded, pruned=meta["pruned"], recovered=meta["recovered"], stages=meta["stages"])
    if meta["adapter_pending"]:
        from peft import PeftModel

        record = getattr(loaded.model, "slimdeploy_record", None)
        state.peft = PeftModel.from_pretrained(loaded.model, str(work / "adapter"), is_trainable=False)
        state.peft.base_model.model.slimdeploy_record = record
    return state, meta["done"]


def run(
    recipe: Recipe,
    model_spec: str | None,
    out: Path,
    force: bool = False,
    trust_remote_code: bool = False,
    progress_factory=None,
    log=print,
) -> dict:
    """Run every stage of `recipe` on `model_spec` (None: recipe.model, else the embedded demo) into `out`."""
    model_spec = model_spec or recipe.model
    out = preflight(recipe, model_spec, Path(out), force)["out"]
    out = Path(out)
    work = out.parent / f".{out.name}.partial"
    with output_lock(out):  # a second run on the same --out fails here, naming this one's pid
        return _run_locked(recipe, model_spec, out, work, force, trust_remote_code, progress_factory, log)


def _run_locked(recipe, model_spec, out: Path, work: Path, force, trust_remote_code, progress_factory, log) -> dict:
    from slimdeploy.pipeline.report import write_outputs

    rhash = recipe_hash(recipe, model_spec)
    if force and work.exists() and (work / "state.json").exists():
        if json.loads((work / "state.json").read_text()).get("recipe_hash") != rhash:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    sweep_work(work)
    torch.manual_seed(recipe.seed)
    resumed = _resume(work, rhash, trust_remote_code)
    if resumed:
        state, start = resumed
        log(f"resuming after stage {start} of {len(recipe.stages)} from {work}")
    else:
        state, start = State(load_model(model_spec, "fp32", trust_remote_code)), 0
        before = greedy_answers(state.loaded.model, state.loaded.tokenizer)  # shown beside the compressed ones
        record = {"kind": "load", "source": state.loaded.source, "samples": before}
        state.stages.append({**record, **param_stats(state.loaded.model)})
    needs_teacher = any(getattr(s, "kd_weight", 0) > 0 for s in recipe.stages[start:])
    if needs_teacher:
        state.teacher = load_model(model_spec, "fp32", trust_remote_code, with_tokenizer=False).model
    stage_fns = {
        "prune": _stage_prune,
        "recover": _stage_recover,
        "merge": _stage_merge,
        "eval": _stage_eval,
        "export": _stage_export,
        "bench": _stage_bench,
    }
    for i, stage in enumerate(recipe.stages):
        if i < start:
            continue
        t0 = time.perf_counter()
        bar = progress_factory(f"[{i + 1}/{len(recipe.stages)}] {stage.kind}") if progress_factory else None
        try:
            with bar if bar else nullcontext() as update:
                args = (state, stage, recipe, update) + (
                    (work,) if stage.kind in ("recover", "export", "bench") else ()
                )
                args += (model_spec,) if stage.kind == "bench" else ()
                result = stage_fns[stage.kind](*args)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted in stage {i + 1}/{len(recipe.stages)} ({stage.kind}); the {i} finished stages are "
                f"kept in {work}: run the same command again to continue"
            ) from None
        result = {
            "kind": stage.kind,
            "index": i,
            "seconds": round(time.perf_counter() - t0, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            **param_stats(state.loaded.model),
            **result,
        }
        state.stages.append(result)
        _save_state(work, state, i + 1, rhash)
    final = work / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir()
    save_model(state.loaded.model, state.loaded.tokenizer, final)
    sweep_work(work)  # no half-written export or bench folder travels into the output
    for produced in ("exports", "bench"):
        if (work / produced).exists():
            shutil.move(str(work / produced), str(final / produced))
    (final / "recipe.yaml").write_text(dump_recipe(recipe))
    after = greedy_answers(state.loaded.model, state.loaded.tokenizer)
    report = write_outputs(final, recipe, state.stages, model_spec, after)
    write_marker(final, "compress")
    check_output(out, force, [model_spec])  # re-checked: the run may have taken hours
    if out.exists():
        shutil.rmtree(out)
    final.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return report


class Interrupted(SlimdeployError):
    exit_code = 130


def sweep_work(work: Path) -> list[str]:
    """Remove what a killed run leaves half-written inside the work dir: temporaries of the export, bench
    and atomic-dir steps (finished exports and bench reports are kept)."""
    removed = []
    for name in ("export_src", "bench_src", "bench_runtime", "bench-partial", "model.next"):
        if (work / name).exists():
            shutil.rmtree(work / name, ignore_errors=True)
            removed.append(name)
    exports = work / "exports"
    if exports.is_dir():
        for stale in list(exports.glob(".*")):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
            removed.append(f"exports/{stale.name}")
    return removed
