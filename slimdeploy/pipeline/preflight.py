"""Everything a recipe needs, checked before the first stage runs (and by --dry-run): nothing loads weights.

A run that would fail after an hour of pruning because a data file is malformed, the output path is a file,
or an export cannot represent the model, fails here instead, in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.pipeline.kinds import PlanFacts, kind_of
from slimdeploy.recipe.schema import Recipe
from slimdeploy.utils.fs import check_output


def stage_needs_text(stage) -> bool:
    return kind_of(stage).needs_text(stage)


def data_inputs(recipe: Recipe) -> list[str]:
    """Every local data path the recipe reads (for output-path safety)."""
    paths: list[str] = [recipe.eval_data] if recipe.eval_data else []
    for st in recipe.stages:
        data = getattr(st, "data", None)
        paths += data if isinstance(data, list) else [data] if data else []
        paths += [st.task_data] if getattr(st, "task_data", None) else []
    return paths


def model_config(model_spec: str | None, fetch: bool = True) -> tuple[str, dict | None]:
    """(kind, config.json) of the model without loading weights; config None where only loading can tell."""
    from slimdeploy.load.model import check_config, check_safetensors, resolve_source

    if model_spec is not None and model_spec.startswith("shape:"):
        return "shape", None
    kind, location = resolve_source(model_spec, fetch)
    if kind not in ("dir", "demo"):
        return kind, None
    path = Path(location)
    check_config(path)
    check_safetensors(path)
    from slimdeploy.load.decilm_format import logical_config

    return kind, logical_config(json.loads((path / "config.json").read_text()))


def check_fits(model_spec: str | None, recipe: Recipe, fetch: bool = True) -> None:
    """A recipe holds the whole model in memory from load to output; refuse one that would not fit."""
    from slimdeploy.prune.stage import weight_bytes_on_load
    from slimdeploy.utils.memory import available_bytes, prune_peak_estimate

    if model_spec is not None and model_spec.startswith("shape:"):
        return
    weights = weight_bytes_on_load(model_spec, recipe.dtype, fetch)
    if weights is None:
        return
    extra = max((kind_of(st).models_beside(st) for st in recipe.stages), default=0)  # a teacher, a dense copy
    need, have = prune_peak_estimate(weights, False) + extra * weights, available_bytes()
    if need > have:
        raise SlimdeployError(
            f"this model needs about {need / 2**30:.1f} GB in memory for a recipe, {have / 2**30:.1f} GB available: "
            "prune it first with `slimdeploy prune --sequential` (one layer at a time), then compress the pruned "
            "folder with a recipe that has no prune stage"
        )


def preflight(recipe: Recipe, model_spec: str | None, out: Path, force: bool, fetch: bool = True) -> dict:
    """Raise a one-line SlimdeployError for the first thing that would make the run fail; returns facts.
    `fetch` False (dry runs): an uncached zoo model is not fetched, and only what its catalogue says is checked."""
    from slimdeploy.load.model import has_tokenizer_files, resolve_source
    from slimdeploy.utils.device import resolve_device

    resolve_device(recipe.device)  # cuda on a machine without one: refused before anything else
    out = check_output(out, force, [model_spec, *data_inputs(recipe)])
    kind, config = model_config(model_spec, fetch)
    check_fits(model_spec, recipe, fetch)
    tokenizer = None
    if kind in ("dir", "demo"):
        location = Path(resolve_source(model_spec, fetch)[1])
        text_stages = [st.kind for st in recipe.stages if stage_needs_text(st)]
        if text_stages and not has_tokenizer_files(location):
            raise SlimdeployError(
                f"the {text_stages[0]} stage needs text, and {location} has no tokenizer files; add them "
                "(tokenizer.json / tokenizer_config.json) or drop the stages that read text"
            )
        if any(kind_of(st).needs_tokenizer_in_preflight for st in recipe.stages):  # e.g. chat templates
            from slimdeploy.load.model import load_tokenizer

            tokenizer = load_tokenizer(str(location))
    for stage in recipe.stages:
        kind_of(stage).check_data(stage, recipe, tokenizer)
    if config is not None and config.get("quantization_config"):
        changing = [st.kind for st in recipe.stages if kind_of(st).changes_weights]
        if changing:
            raise SlimdeployError(
                f"the model is quantized, and the recipe would {changing[0]} it; start from the unquantized model"
            )
    facts = PlanFacts(model_kind=kind, config=config)
    for i, stage in enumerate(recipe.stages):
        kind_of(stage).check(i, stage, facts)
        seq_len = getattr(stage, "seq_len", None)
        if seq_len and config is not None and seq_len > config.get("max_position_embeddings", seq_len):
            raise SlimdeployError(
                f"stages[{i}] ({stage.kind}): seq_len {seq_len} exceeds the model's context of "
                f"{config['max_position_embeddings']} tokens; lower seq_len"
            )
    return {"model_kind": kind, "out": str(out)}
