"""Top-level commands: eval, inspect, prune, compress, export, bench."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from slimdeploy.cli.common import emit, not_yet, progress_bar

ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Model directory, .gguf file or hub id (default: the embedded slimdeploy-demo)."),
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto | fp32 | bf16 | fp16")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model's own Python code to run.")]


def eval_cmd(
    model: ModelOpt = None,
    data: Annotated[
        Optional[str], typer.Option("--data", "-d", help=".txt, .jsonl or hf:NAME:SPLIT (default: demo held-out split)")
    ] = None,
    context_length: Annotated[Optional[int], typer.Option(help="Window length (default min(512, model max)).")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Window step (default context_length // 2).")] = None,
    boundary: Annotated[str, typer.Option(help="Document boundary: bos (BOS before each) | eos | none.")] = "bos",
    doc_split: Annotated[str, typer.Option(help="Text files: none (one document) | blank-line (paragraph = document).")] = "none",
    max_tokens: Annotated[Optional[int], typer.Option(help="Score only the first N tokens of the stream.")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    dtype: DtypeOpt = "fp32",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Perplexity of a model on text, with the sliding-window protocol recorded in the output."""
    from slimdeploy.evaluate.api import evaluate_perplexity

    result = evaluate_perplexity(
        model, data, context_length, stride, boundary, doc_split, max_tokens, batch_size, dtype, trust_remote_code,
        progress_factory=progress_bar,
    )

    def human(r: dict) -> None:
        p = r["protocol"]
        print(f"model        {r['model']}")
        print(f"data         {r['data'].get('source')}")
        print(f"protocol     context {p['context_length']}, stride {p['stride']}, boundary {p['boundary']}, "
              f"doc_split {p['doc_split']}")
        print(f"tokens       {r['tokens_scored']}")
        print(f"nll          {r['nll']:.5f}")
        print(f"ppl          {r['ppl']:.4f}")
        print(f"wall time    {r['wall_s']:.1f} s")

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
        from slimdeploy.analyze.inspect_groups import describe_groups

        result["groups"] = describe_groups(loaded, data, criterion)

    def human(r: dict) -> None:
        a = r["attention"]
        print(f"{r['source']}: {r['architecture']} ({r['family']}), {r['parameters']:,} parameters, {r['dtype']}")
        for comp, n in sorted(r["by_component"].items(), key=lambda kv: -kv[1]):
            print(f"  {comp:<11} {n:>14,}  {100 * n / r['parameters']:5.1f}%")
        print(f"  layers {r['layers']}, hidden {r['hidden_size']}, mlp {r['intermediate_size']}, vocab {r['vocab_size']}")
        print(f"  attention: {a['query_heads']} query heads, {a['kv_heads']} KV heads "
              f"({a['queries_per_kv']} per group), head_dim {a['head_dim']}; tied embeddings: {r['tied_embeddings']}")
        for name, shape in r["layer_shapes"][0]["shapes"].items():
            print(f"    layers.0.{name:<32} {shape}")
        if "groups" in r:
            from slimdeploy.analyze.inspect_groups import print_groups

            print_groups(r["groups"])

    emit(result, human)


def prune_cmd() -> None:
    """Structured pruning (heads, KV groups, MLP channels, layers) to a smaller dense model."""
    not_yet("prune", "issue 4 (structured pruning engine)")


def compress_cmd() -> None:
    """Run a recipe end to end: prune, recover, merge, export, eval, bench."""
    not_yet("compress", "issue 5 (recipes and compress)")


def export_cmd() -> None:
    """Export a model for vLLM, ONNX or onnxruntime-genai, verified by loading it."""
    not_yet("export", "issue 6 (exporters)")


def bench_cmd() -> None:
    """Latency, memory and throughput against the unpruned baseline."""
    not_yet("bench", "issue 7 (serving harness)")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("inspect")(inspect_cmd)
    app.command("prune")(prune_cmd)
    app.command("compress")(compress_cmd)
    app.command("export")(export_cmd)
    app.command("bench")(bench_cmd)
