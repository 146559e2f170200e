"""Top-level commands: eval, inspect, prune, compress, export, bench."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from slimdeploy.cli.common import emit, info, progress_bar
from slimdeploy.errors import SlimdeployError

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model", "-m", help="Model directory, .gguf file or hub id (default: the embedded slimdeploy-demo)."
    ),
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto | fp32 | bf16 | fp16")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available) | cpu | cuda | cuda:N")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model's own Python code to run.")]


def eval_cmd(
    model: ModelOpt = None,
    data: Annotated[
        Optional[str], typer.Option("--data", "-d", help=".txt, .jsonl or hf:NAME:SPLIT (default: demo held-out split)")
    ] = None,
    context_length: Annotated[Optional[int], typer.Option(min=2, help="Window (default: min(512, model max)).")] = None,
    stride: Annotated[Optional[int], typer.Option(min=1, help="Window step (default context_length // 2).")] = None,
    boundary: Annotated[str, typer.Option(help="Document boundary: bos (BOS before each) | eos | none.")] = "bos",
    doc_split: Annotated[
        str, typer.Option(help="Text files: none (one document) | blank-line (paragraph = document).")
    ] = "none",
    max_tokens: Annotated[Optional[int], typer.Option(min=2, help="Score the first N tokens only.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 8,
    dtype: DtypeOpt = "fp32",
    device: DeviceOpt = "cpu",
    trust_remote_code: TrustOpt = False,
    protocol: Annotated[
        str,
        typer.Option(help="sliding (ours) | wikitext2 (SparseGPT/SliceGPT windows) | llm-pruner (128 tokens)"),
    ] = "sliding",
    tasks: Annotated[
        Optional[str], typer.Option(help="lm-eval zero-shot tasks, e.g. arc_easy,piqa,boolq (needs [eval]).")
    ] = None,
    task_data: Annotated[
        Optional[Path], typer.Option(help="Offline: a folder of <task>.jsonl files in the hub datasets' schemas.")
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="Seeded subset of N documents per task.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --limit subset.")] = 0,
) -> None:
    """Perplexity of a model on text, and zero-shot accuracy (lm-eval) with --tasks; protocols recorded."""
    from slimdeploy.evaluate.api import evaluate_perplexity

    if tasks is not None:
        return _eval_tasks(
            model, tasks, task_data, limit, seed, batch_size, dtype, trust_remote_code, data, protocol, device
        )

    result = evaluate_perplexity(
        model,
        data,
        context_length,
        stride,
        boundary,
        doc_split,
        max_tokens,
        batch_size,
        dtype,
        trust_remote_code,
        progress_factory=progress_bar,
        protocol=protocol,
        device=device,
    )

    def human(r: dict) -> None:
        p = r["protocol"]
        print(f"model        {r['model']}")
        print(f"data         {r['data'].get('source')}")
        print(
            f"protocol     {p['name']}: context {p['context_length']}, stride {p['stride']}, "
            f"boundary {p['boundary']}, doc_split {p['doc_split']}{', chunked' if p['chunked'] else ''}"
        )
        print(f"tokens       {r['tokens_scored']}")
        print(f"nll          {r['nll']:.5f}")
        print(f"ppl          {r['ppl']:.4f}")
        print(f"wall time    {r['wall_s']:.1f} s")

    emit(result, human)


def _eval_tasks(model, tasks, task_data, limit, seed, batch_size, dtype, trust, data, protocol, device) -> None:
    from slimdeploy.evaluate.api import evaluate_zero_shot
    from slimdeploy.evaluate.zeroshot import parse_tasks

    ppl = {"data": data, "protocol": protocol} if data or protocol != "sliding" else None
    result = evaluate_zero_shot(
        model, parse_tasks(tasks), task_data, limit, batch_size, dtype, trust, seed, ppl, progress_bar, device
    )

    def human(r: dict) -> None:
        zs = r["zero_shot"]
        print(f"model        {r['model']} ({zs['protocol']['dtype']}, {zs['protocol']['harness']}, 0-shot)")
        for name, t in zs["tasks"].items():
            norm = f", acc_norm {t['acc_norm']:.4f} +- {t['acc_norm_stderr']:.4f}" if "acc_norm" in t else ""
            print(f"{name:<14} acc {t['acc']:.4f} +- {t['acc_stderr']:.4f}{norm}  (n={t['n']} of {t['of']})")
            if "warning" in t:
                print(f"  warning: {t['warning']}")
        print(f"mean acc     {zs['mean_acc']:.4f} over {len(zs['tasks'])} tasks; {zs['protocol']['subset']}")
        if "perplexity" in r:
            print(f"perplexity   {r['perplexity']['ppl']:.4f} ({r['perplexity']['protocol']['name']})")

    emit(result, human)


def inspect_cmd(
    model: Annotated[Optional[str], typer.Argument(help="Model directory, .gguf or hub id (default: demo).")] = None,
    groups: Annotated[bool, typer.Option("--groups", help="List the prunable groups.")] = False,
    data: Annotated[Optional[str], typer.Option(help="Calibration text: also score the groups.")] = None,
    criterion: Annotated[str, typer.Option(help="Criterion used with --data.")] = "wanda",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Family, parameter counts by component, shapes, attention layout and (with --groups) prunable groups."""
    from slimdeploy.analyze.summary import summarize
    from slimdeploy.load.model import load_model

    loaded = load_model(model, "auto", trust_remote_code, with_tokenizer=data is not None)
    result = summarize(loaded.model)
    result["source"] = loaded.source
    if groups or data:
        from slimdeploy.score.inspect_groups import describe_groups

        result["groups"] = describe_groups(loaded, data, criterion)

    def human(r: dict) -> None:
        a = r["attention"]
        print(f"{r['source']}: {r['architecture']} ({r['family']}), {r['parameters']:,} parameters, {r['dtype']}")
        for comp, n in sorted(r["by_component"].items(), key=lambda kv: -kv[1]):
            print(f"  {comp:<11} {n:>14,}  {100 * n / r['parameters']:5.1f}%")
        print(
            f"  layers {r['layers']}, hidden {r['hidden_size']}, mlp {r['intermediate_size']}, vocab {r['vocab_size']}"
        )
        print(
            f"  attention: {a['query_heads']} query heads, {a['kv_heads']} KV heads "
            f"({a['queries_per_kv']} per group), head_dim {a['head_dim']}; tied embeddings: {r['tied_embeddings']}"
        )
        for name, shape in (r["layer_shapes"][0]["shapes"] if r["layer_shapes"] else {}).items():
            print(f"    layers.0.{name:<32} {shape}")
        if "groups" in r:
            from slimdeploy.score.inspect_groups import print_groups

            print_groups(r["groups"])

    emit(result, human)


def prune_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (written whole or not at all).")],
    model: ModelOpt = None,
    ratio: Annotated[float, typer.Option(help="Fraction of all parameters to remove, in (0, 1).")] = 0.2,
    criterion: Annotated[
        str, typer.Option(help="random|l1|l2|wanda|flap|taylor|loraprune|surgeon|surgeon_layerwise")
    ] = "surgeon",
    allocation: Annotated[str, typer.Option(help="uniform (same widths everywhere) | global (per layer)")] = "uniform",
    structures: Annotated[str, typer.Option(help="Comma list of mlp,head,kv,layer.")] = "mlp,head",
    round_to: Annotated[int, typer.Option(help="Kept MLP widths are multiples of this.")] = 64,
    tp_size: Annotated[int, typer.Option(help="Keep widths divisible for this tensor-parallel size.")] = 1,
    shots: Annotated[int, typer.Option(help="Prune in this many steps, re-scoring after each.")] = 1,
    data: Annotated[Optional[str], typer.Option(help="Calibration text (default: demo corpus split).")] = None,
    n_samples: Annotated[int, typer.Option(help="Calibration windows.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 256,
    seed: Annotated[int, typer.Option(help="Calibration sampling seed.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    trust_remote_code: TrustOpt = False,
    device: DeviceOpt = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="fp32 | bf16 | fp16 | auto: the weights stay in it")] = "fp32",
    sequential: Annotated[
        Optional[bool],
        typer.Option(
            "--sequential/--no-sequential",
            help="One decoder layer in memory at a time (a local safetensors folder; criteria without a "
            "whole-model backward: surgeon_layerwise, wanda, flap, l1, l2, random). Default: chosen by itself "
            "when the model would not fit in available memory.",
        ),
    ] = None,
) -> None:
    """Structured pruning (heads, KV groups, MLP channels, layers) to a smaller dense model."""
    from slimdeploy.prune.api import PruneConfig
    from slimdeploy.prune.stage import prune_to_dir
    from slimdeploy.recipe.validate import config_or_error

    config = config_or_error(
        PruneConfig,
        dict(
            ratio=ratio,
            criterion=criterion,
            allocation=allocation,
            structures=[s.strip() for s in structures.split(",") if s.strip()],
            round_to=round_to,
            tp_size=tp_size,
            shots=shots,
            data=data,
            n_samples=n_samples,
            seq_len=seq_len,
            seed=seed,
        ),
        "prune",
    )
    with progress_bar(f"pruning ({criterion})") as update:
        report = prune_to_dir(model, config, out, force, trust_remote_code, update, device, dtype, sequential)
    emit(
        report,
        lambda r: print(
            f"{r['params_before']:,} -> {r['params_after']:,} parameters ({r['removed_fraction']:.1%} removed), "
            f"saved to {out}"
        ),
    )


def compress_cmd(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Built-in recipe name or a .yaml path.")] = "20pct",
    model: ModelOpt = None,
    data: Annotated[Optional[str], typer.Option(help="Data for every prune/recover/eval stage of the recipe.")] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output directory (default runs/<recipe>).")
    ] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override: KIND.KEY=VALUE (repeatable).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Validate the recipe and print it; load nothing.")] = False,
    trust_remote_code: TrustOpt = False,
    device: Annotated[
        Optional[str], typer.Option("--device", help="auto | cpu | cuda[:N] (overrides the recipe's device)")
    ] = None,
    dtype: Annotated[
        Optional[str],
        typer.Option(
            "--dtype", help="fp32 | bf16 | fp16 | auto: the weights every stage works in (overrides the recipe)"
        ),
    ] = None,
) -> None:
    """Run a recipe end to end: prune, recover, merge, eval, export, bench.

    Data-parallel recovery over N processes: launch with torchrun, `torchrun --nproc-per-node N -m slimdeploy
    compress ...` (gloo on CPU, NCCL on CUDA). Rank 0 runs every other stage and writes all outputs; the
    recover stage's batch_size must be a multiple of N; the report records the world size and tokens per rank.
    """
    from slimdeploy.recipe.loader import dump_recipe, load_recipe, stage_kinds

    data_sets = [f"{k}.data={data}" for k in sorted(stage_kinds(recipe) & {"prune", "recover", "eval"})] if data else []
    rec, path = load_recipe(recipe, data_sets + list(set_ or []))
    from slimdeploy.load.model import params_on_disk

    n_params = params_on_disk(model or rec.model, fetch=not dry_run)  # a dry run fetches nothing
    if n_params is not None and n_params > rec.real_model_min_params:
        if rec.real_model:
            rec, path = load_recipe(recipe, data_sets + list(set_ or []), n_params)
            info(f"{n_params / 1e6:.0f}M parameters: the recipe's real-model budgets apply ({rec.real_model})")
        else:
            info(
                f"warning: recipe {rec.name} has no real_model budgets; its demo-sized token budgets run on a "
                f"{n_params / 1e6:.0f}M-parameter model (raise them with --set, e.g. recover.steps=...)"
            )
    out = out or Path("runs") / rec.name
    if device is not None:
        rec = rec.model_copy(update={"device": device})  # checked by the preflight, like the recipe's own
    if dtype is not None:
        from slimdeploy.utils.device import check_dtype

        check_dtype(dtype)
        rec = rec.model_copy(update={"dtype": dtype})
    if dry_run:  # the checks run() starts with: model, data, output, exports; nothing loads
        from slimdeploy.pipeline.preflight import preflight

        facts = preflight(rec, model or rec.model, out, force, fetch=False)
        emit(
            {"recipe": str(path), "resolved": rec.model_dump(mode="json"), "preflight": facts},
            lambda r: print(dump_recipe(rec)),
        )
        return
    from slimdeploy.pipeline.runner import run

    report = run(rec, model, out, force, trust_remote_code, progress_factory=progress_bar, log=info)
    if report is None:  # a rank > 0 under torchrun: rank 0 reports
        return
    s = report["summary"]
    ppl = ", ".join(f"{k} {v:.3f}" for k, v in s["perplexity"].items())
    emit(
        report,
        lambda r: print(
            f"{s['params_before']:,} -> {s['params_after']:,} parameters ({s['params_kept_fraction']:.1%} kept); "
            f"perplexity {ppl}; {s['seconds_total']} s; written to {out}"
        ),
    )


def export_cmd(
    model_dir: Annotated[Path, typer.Argument(help="A model directory (e.g. the output of compress).")],
    format: Annotated[str, typer.Option("--format", "-f", help="vllm | onnx | ort-genai")] = "vllm",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory.")] = None,
    dtype: Annotated[str, typer.Option(help="onnx: fp32 | fp16 | bf16; ort-genai: fp32 | fp16 | int4.")] = "fp32",
    tp_size: Annotated[int, typer.Option(min=1, help="Report tensor-parallel readiness for this size.")] = 1,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip loading the export in its runtime.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Export for vLLM, onnxruntime (plain ONNX with KV cache) or onnxruntime-genai, verified by loading it."""
    if format not in ("vllm", "onnx", "ort-genai"):
        raise SlimdeployError(f"unknown export format {format!r}; choose vllm, onnx or ort-genai")
    if not model_dir.is_dir():
        raise SlimdeployError(f"{model_dir} is not a model directory; pass the folder compress or prune wrote")
    if format == "vllm" and dtype != "fp32":
        raise SlimdeployError("--dtype applies to onnx and ort-genai; vLLM picks its dtype when serving (--dtype)")
    out = out or model_dir.parent / f"{model_dir.name}-{format}"
    from slimdeploy.export.api import run_export

    report = run_export(model_dir, out, format, dtype, tp_size, verify=not no_verify, force=force)
    from slimdeploy.export.verify import verification_line

    emit(report, lambda r: print(f"{format} export written to {out}; {verification_line(r.get('verification'))}"))


def quantize_cmd(
    model: Annotated[
        Optional[str], typer.Argument(help="Model folder, zoo:NAME or hub id (default: the demo).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (written whole or not at all).")] = Path(
        "quantized"
    ),
    scheme: Annotated[str, typer.Option(help="w8a8 (int8 weights + per-token int8 activations) | w4a16")] = "w8a8",
    method: Annotated[str, typer.Option(help="gptq (calibrated) | rtn (round to nearest)")] = "gptq",
    group_size: Annotated[Optional[int], typer.Option(help="w4a16 group size (default 128).")] = None,
    ignore: Annotated[str, typer.Option(help="Comma list of module names kept unquantized.")] = "lm_head",
    actorder: Annotated[bool, typer.Option(help="GPTQ: columns by decreasing activation energy (w8a8).")] = False,
    data: Annotated[Optional[str], typer.Option(help="Calibration text (default: demo corpus split).")] = None,
    n_samples: Annotated[int, typer.Option(help="Calibration windows.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 256,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory (one slimdeploy wrote).")] = False,
    trust_remote_code: TrustOpt = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Post-training weight quantization into a compressed-tensors checkpoint (from_pretrained and vLLM load it)."""
    from slimdeploy.quantize.config import QuantizeConfig
    from slimdeploy.quantize.stage import quantize_to_dir
    from slimdeploy.recipe.validate import config_or_error

    cfg = config_or_error(
        QuantizeConfig,
        dict(
            scheme=scheme,
            method=method,
            group_size=group_size,
            ignore=[s.strip() for s in ignore.split(",") if s.strip()],
            actorder=actorder,
            data=data,
            n_samples=n_samples,
            seq_len=seq_len,
        ),
        "quantize",
    )
    with progress_bar(f"quantizing ({scheme}, {method})") as update:
        report = quantize_to_dir(model, cfg, out, force, trust_remote_code, update, device)
    b = report["weight_file_bytes"]
    emit(
        report,
        lambda r: print(
            f"{r['quantized_modules']} linear layers to {r['scheme']['weights']} ({cfg.method}); weight files "
            + (f"{b['before'] / 1e6:.1f} MB -> " if b["before"] else "")
            + f"{b['after'] / 1e6:.1f} MB; saved to {out}"
        ),
    )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("inspect")(inspect_cmd)
    app.command("prune")(prune_cmd)
    app.command("quantize")(quantize_cmd)
    app.command("compress")(compress_cmd)
    app.command("export")(export_cmd)
