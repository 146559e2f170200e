"""Everything a recipe needs, checked before the first stage runs (and by --dry-run): nothing loads weights.

A run that would fail after an hour of pruning because a data file is malformed, the output path is a file,
or an export cannot represent the model, fails here instead, in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.recipe.schema import Recipe
from slimdeploy.utils.fs import check_output

TEXT_STAGES = {"recover", "eval"}  # prune needs text only for data-driven criteria


def stage_needs_text(stage) -> bool:
    if stage.kind == "prune":
        from slimdeploy.prune.stage import needs_text

        return needs_text(stage)
    return stage.kind in TEXT_STAGES


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


def check_data(stage, recipe: Recipe, tokenizer=None) -> None:
    """Read and parse the stage's data now, so a bad file fails before any stage runs."""
    if stage.kind == "eval":
        from slimdeploy.load.data import load_texts

        if stage.tasks:
            from slimdeploy.evaluate.zeroshot import check_tasks

            check_tasks(stage.tasks, Path(stage.task_data) if stage.task_data else None, stage.limit)

        if stage.protocol != "sliding":
            from slimdeploy.evaluate.protocols import wikitext_rows

            if not (stage.data or recipe.eval_data):
                raise SlimdeployError(f"the eval stage's {stage.protocol} protocol needs data: WikiText-2's raw test")
            wikitext_rows(stage.data or recipe.eval_data)
        else:
            load_texts(stage.data or recipe.eval_data, split="eval")
    elif stage.kind == "quantize" and stage.method == "gptq" and stage.data is not None:
        from slimdeploy.load.data import load_texts

        load_texts(stage.data, split="calibration")
    elif stage.kind == "prune" and stage_needs_text(stage) and stage.data is not None:
        from slimdeploy.load.data import load_texts

        load_texts(stage.data, split="calibration")
    elif stage.kind == "recover":
        from slimdeploy.recover.data import pack_blocks, recovery_docs

        sources = stage.data if isinstance(stage.data, list) else [stage.data]
        for source in sources:  # rendered with the model's chat template and packed now, as the stage will
            if source is not None:
                docs, _ = recovery_docs(
                    source, stage.prompt_template, tokenizer=tokenizer, chat_template=stage.chat_template
                )
                if tokenizer is not None:
                    pack_blocks(tokenizer, docs, stage.seq_len)
        if stage.kd_weight > 0 and stage.teacher_device != "same":
            from slimdeploy.utils.device import resolve_device

            resolve_device(stage.teacher_device, "recover.teacher_device")


def check_fits(model_spec: str | None, recipe: Recipe, fetch: bool = True) -> None:
    """A recipe holds the whole model in memory from load to output; refuse one that would not fit."""
    from slimdeploy.prune.stage import weight_bytes_on_load
    from slimdeploy.utils.memory import available_bytes, prune_peak_estimate

    if model_spec is not None and model_spec.startswith("shape:"):
        return
    weights = weight_bytes_on_load(model_spec, recipe.dtype, fetch)
    if weights is None:
        return
    need, have = prune_peak_estimate(weights, False), available_bytes()
    if need > have:
        raise SlimdeployError(
            f"this model needs about {need / 2**30:.1f} GB in memory for a recipe, {have / 2**30:.1f} GB available: "
            "prune it first with `slimdeploy prune --sequential` (one layer at a time), then compress the pruned "
            "folder with a recipe that has no prune stage"
        )


def check_quantized_serving(i: int, stage, quantized) -> None:
    """A quantized model is a compressed-tensors checkpoint: vLLM serves it (where it has the kernel)."""
    from slimdeploy.quantize.serving import check_scheme_served
    from slimdeploy.utils.device import resolve_device

    where = f"stages[{i}] ({stage.kind} {getattr(stage, 'format', getattr(stage, 'backend', ''))})"
    if stage.kind == "export" and stage.format != "vllm":
        raise SlimdeployError(
            f"{where}: a quantized model exports as its compressed-tensors checkpoint for vLLM only; put this "
            "export before the quantize stage"
        )
    if stage.kind == "bench" and stage.backend not in ("vllm", "vllm-server"):
        raise SlimdeployError(
            f"{where}: the {stage.backend} backend would time a simulation of the quantized scheme, not a "
            "serving speed; bench a quantized model with backend vllm"
        )
    if stage.kind == "export" and not stage.verify:
        return
    scheme = {"weight_bits": quantized.bits, "activations": "int8" if quantized.scheme == "w8a8" else None}
    try:
        check_scheme_served(scheme, resolve_device("auto").startswith("cuda"))
    except SlimdeployError as exc:
        raise SlimdeployError(f"{where}: {exc}") from None


def preflight(recipe: Recipe, model_spec: str | None, out: Path, force: bool, fetch: bool = True) -> dict:
    """Raise a one-line SlimdeployError for the first thing that would make the run fail; returns facts.
    `fetch` False (dry runs): an uncached zoo model is not fetched, and only what its catalogue says is checked."""
    from slimdeploy.export.feasibility import check_exportable
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
        if any(st.kind == "recover" for st in recipe.stages):  # its chat template and block count, checked now
            from slimdeploy.load.model import load_tokenizer

            tokenizer = load_tokenizer(str(location))
    for stage in recipe.stages:
        check_data(stage, recipe, tokenizer)
    per_layer = False
    quantized = None
    if config is not None and config.get("quantization_config"):
        changing = [st.kind for st in recipe.stages if st.kind in ("prune", "recover", "quantize")]
        if changing:
            raise SlimdeployError(
                f"the model is quantized, and the recipe would {changing[0]} it; start from the unquantized model"
            )
    for i, stage in enumerate(recipe.stages):
        if stage.kind == "quantize":
            if per_layer:
                raise SlimdeployError(
                    f"stages[{i}] (quantize): per-layer widths (allocation global) are not quantized yet; "
                    "prune with allocation uniform before quantizing"
                )
            quantized = stage
        if quantized is not None and stage.kind in ("export", "bench"):
            check_quantized_serving(i, stage, quantized)
        if stage.kind == "prune" and stage.allocation == "global":
            per_layer = True
        if stage.kind == "recover" and stage.prune is not None and stage.prune.allocation == "global":
            per_layer = True
        if per_layer and stage.kind in ("prune", "recover") and config is not None:
            from slimdeploy.load.decilm_format import check_representable

            try:  # per-layer widths are saved as DeciLM files: a family that format cannot carry fails now
                check_representable(config)
            except SlimdeployError as exc:
                raise SlimdeployError(f"stages[{i}] ({stage.kind}, allocation global): {exc}") from None
        if stage.kind == "export" and config is not None:
            try:
                check_exportable(config, stage.format, stage.dtype, stage.verify, per_layer or None)
            except SlimdeployError as exc:
                raise SlimdeployError(f"stages[{i}] (export {stage.format}): {exc}") from None
        seq_len = getattr(stage, "seq_len", None)
        if seq_len and config is not None and seq_len > config.get("max_position_embeddings", seq_len):
            raise SlimdeployError(
                f"stages[{i}] ({stage.kind}): seq_len {seq_len} exceeds the model's context of "
                f"{config['max_position_embeddings']} tokens; lower seq_len"
            )
        if stage.kind == "bench":
            from slimdeploy.serve.backends import check_backend

            check_backend(stage.backend)
            if config is not None and stage.input_len + stage.output_len > config.get("max_position_embeddings", 1e9):
                raise SlimdeployError(
                    f"stages[{i}] (bench): input_len + output_len = {stage.input_len + stage.output_len} exceeds "
                    f"the model's context of {config['max_position_embeddings']} tokens"
                )
            if stage.backend != "torch" and kind not in ("dir", "demo"):
                raise SlimdeployError(
                    f"stages[{i}] (bench {stage.backend}) needs the baseline as a model directory, not a {kind} source"
                )
    return {"model_kind": kind, "out": str(out)}
