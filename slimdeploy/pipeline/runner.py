"""run(): a recipe's stages top to bottom, resumable, ending in one output directory renamed into place.

The loop only asks each stage's kind (pipeline/kinds/) to run it with the typed PipelineState; it names none.

Work happens in `.<out>.partial/` beside the output. After every stage the current model (and, between
recover and merge, the adapter) and `state.json` are saved there, so re-running the same command continues
after the last finished stage. The output directory appears only when everything succeeded.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from slimdeploy.analyze.summary import param_stats
from slimdeploy.errors import SlimdeployError
from slimdeploy.evaluate.samples import greedy_answers
from slimdeploy.load.checkpoint import save_model
from slimdeploy.load.model import load_model
from slimdeploy.pipeline.kinds import KINDS, kind_of
from slimdeploy.pipeline.preflight import preflight
from slimdeploy.pipeline.state import PipelineState, StageContext
from slimdeploy.prune.record import PruneRecord, plan_from_json, plan_to_json, record_for
from slimdeploy.recipe.loader import dump_recipe, recipe_hash
from slimdeploy.recipe.schema import Recipe
from slimdeploy.utils.device import resolve_device
from slimdeploy.utils.distributed import broadcast, init_from_env, world
from slimdeploy.utils.fs import check_output, output_lock, write_marker
from slimdeploy.utils.memory import peak_rss_mb


def _save_state(work: Path, state: PipelineState, done: int, rhash: str) -> None:
    model_dir = work / "model.next"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir()
    base = state.model if state.adapter is None else state.adapter.base_model.model
    save_model(base, state.tokenizer, model_dir, state.record)
    if (work / "model").exists():
        shutil.rmtree(work / "model")
    model_dir.rename(work / "model")
    meta = {
        "recipe_hash": rhash,
        "done": done,
        "pruned": state.pruned,
        "recovered": state.recovered,
        "quantized": state.quantized,
        "adapter_pending": state.adapter is not None,
        "pending_plan": plan_to_json(state.pending_plan) if state.pending_plan is not None else None,
        "stages": state.stages,
    }
    (work / "state.json.tmp").write_text(json.dumps(meta, indent=1, default=str))
    (work / "state.json.tmp").replace(work / "state.json")


def _resume(work: Path, rhash: str, trust: bool, device: str, dtype: str = "fp32") -> tuple[PipelineState, int] | None:
    meta_path = work / "state.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta["recipe_hash"] != rhash:
        raise SlimdeployError(f"{work} holds an interrupted run of a different recipe/model; delete it or pass --force")
    loaded = load_model(str(work / "model"), dtype, trust, device=device)
    state = PipelineState(
        loaded.model,
        loaded.tokenizer,
        loaded.source,
        record=PruneRecord.load(work / "model"),
        pruned=meta["pruned"],
        recovered=meta["recovered"],
        quantized=meta.get("quantized"),
        stages=meta["stages"],
    )
    if meta.get("pending_plan"):
        state.pending_plan = plan_from_json(meta["pending_plan"])
    if meta["adapter_pending"]:
        from peft import PeftModel

        state.adapter = PeftModel.from_pretrained(loaded.model, str(work / "adapter"), is_trainable=False)
    return state, meta["done"]


def run(
    recipe: Recipe,
    model_spec: str | None,
    out: Path,
    force: bool = False,
    trust_remote_code: bool = False,
    progress_factory=None,
    log=print,
) -> dict | None:
    """Run every stage of `recipe` on `model_spec` (None: recipe.model, else the embedded demo) into `out`.

    Under `torchrun --nproc-per-node N`, rank 0 runs the pipeline and writes everything; the other ranks
    join only the recover stages (data-parallel, utils/distributed.py) and return None."""
    model_spec = model_spec or recipe.model
    if init_from_env(resolve_device(recipe.device))[0] > 0:
        return _follow(recipe, model_spec, trust_remote_code)
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
    device = resolve_device(recipe.device)
    resumed = _resume(work, rhash, trust_remote_code, device, recipe.dtype)
    if resumed:
        state, start = resumed
        log(f"resuming after stage {start} of {len(recipe.stages)} from {work}")
    else:
        loaded = load_model(model_spec, recipe.dtype, trust_remote_code, device=device)
        state = PipelineState(loaded.model, loaded.tokenizer, loaded.source, record=record_for(loaded))
        before = greedy_answers(state.model, state.tokenizer, source=state.source)  # beside the compressed ones
        load_entry = {"kind": "load", "source": state.source, "samples": before}
        state.stages.append({**load_entry, **param_stats(state.model)})
        start = 0
    n = len(recipe.stages)
    for i, cfg in enumerate(recipe.stages[start:], start=start):
        kind = kind_of(cfg)
        if kind.data_parallel and world()[1] > 1:  # the other ranks resume from here and join
            if not (work / "state.json").exists() or json.loads((work / "state.json").read_text())["done"] != i:
                _save_state(work, state, i, rhash)
            broadcast({"stage": i, "work": str(work), "rhash": rhash})
        t0 = time.perf_counter()
        bar = progress_factory(f"[{i + 1}/{n}] {cfg.kind}") if progress_factory else None
        try:
            with bar if bar else nullcontext() as update:
                ctx = StageContext(recipe, model_spec, work, trust_remote_code, update, device)
                result = kind.run(state, cfg, ctx)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted in stage {i + 1}/{n} ({cfg.kind}); the {i} finished stages are "
                f"kept in {work}: run the same command again to continue"
            ) from None
        result.index, result.seconds, result.peak_rss_mb = i, time.perf_counter() - t0, peak_rss_mb()
        result.params = param_stats(state.model)
        state.stages.append(result.to_json())
        _save_state(work, state, i + 1, rhash)
    if world()[1] > 1:
        broadcast(None)  # the other ranks are done
    final = work / "final"
    if final.exists():  # a run that failed after moving its products in: take them back before clearing it
        for produced in (p for kind in KINDS.values() for p in kind.products):
            if (final / produced).exists() and not (work / produced).exists():
                shutil.move(str(final / produced), str(work / produced))
        shutil.rmtree(final)
    final.mkdir()
    save_model(state.model, state.tokenizer, final, state.record)
    sweep_work(work)  # no half-written export or bench folder travels into the output
    for produced in (p for kind in KINDS.values() for p in kind.products):
        if (work / produced).exists():
            shutil.move(str(work / produced), str(final / produced))
    (final / "recipe.yaml").write_text(dump_recipe(recipe))
    # the prompts the load stage used (a resumed run's state.source is the work folder, not the model)
    after = greedy_answers(state.model, state.tokenizer, source=state.stages[0].get("source", state.source))
    report = write_outputs(final, recipe, state.stages, model_spec, after, name=out.name)
    write_marker(final, "compress")
    check_output(out, force, [model_spec])  # re-checked: the run may have taken hours
    if out.exists():
        shutil.rmtree(out)
    final.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return report


def _follow(recipe: Recipe, model_spec: str | None, trust_remote_code: bool) -> None:
    """A rank > 0 under torchrun: for each recover stage rank 0 announces, load the state it saved just
    before, and train alongside it. Writes nothing; rank 0 does."""
    device = resolve_device(recipe.device)
    while (msg := broadcast()) is not None:
        resumed = _resume(Path(msg["work"]), msg["rhash"], trust_remote_code, device, recipe.dtype)
        assert resumed is not None and resumed[1] == msg["stage"], "rank 0 saves the state before announcing"
        state, i = resumed
        cfg = recipe.stages[i]
        assert kind_of(cfg).data_parallel
        ctx = StageContext(recipe, model_spec, Path(msg["work"]), trust_remote_code, None, device)
        kind_of(cfg).run(state, cfg, ctx)
    return None


class Interrupted(SlimdeployError):
    exit_code = 130


def sweep_work(work: Path) -> list[str]:
    """Remove what a killed run leaves half-written inside the work dir: the stage kinds' scratch folders and
    the atomic-dir temporaries inside their products (finished exports and bench reports are kept)."""
    removed = []
    for name in ("model.next", *(s for kind in KINDS.values() for s in kind.scratch)):
        if (work / name).exists():
            shutil.rmtree(work / name, ignore_errors=True)
            removed.append(name)
    for produced in (p for kind in KINDS.values() for p in kind.products):
        if (work / produced).is_dir():
            for stale in list((work / produced).glob(".*")):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
                removed.append(f"{produced}/{stale.name}")
    return removed
