"""`slimdeploy bench run | check`: serving measurements against the unpruned baseline, and the CI gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from slimdeploy.cli.common import emit, not_yet, progress_bar
from slimdeploy.errors import SlimdeployError

app = typer.Typer(help="Latency, memory and throughput against the baseline; a regression gate.", no_args_is_help=True)


@app.command("run")
def run_cmd(
    candidate: Annotated[str, typer.Argument(help="The compressed model directory.")],
    baseline: Annotated[Optional[str], typer.Option(help="The unpruned model (default: the demo).")] = None,
    backend: Annotated[str, typer.Option(help="torch (vllm, onnxruntime, ort-genai: issue 7)")] = "torch",
    input_len: Annotated[int, typer.Option(help="Prompt tokens per request.")] = 64,
    output_len: Annotated[int, typer.Option(help="Generated tokens per request (EOS ignored).")] = 32,
    concurrency: Annotated[str, typer.Option(help="Comma list of concurrency levels.")] = "1,4",
    repeats: Annotated[int, typer.Option(help="Measured repeats (after one warm-up).")] = 3,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16")] = "fp32",
    out: Annotated[Path, typer.Option(help="Where to write bench.json and bench.md.")] = Path("bench-out"),
) -> None:
    """Baseline and candidate, interleaved in one invocation; ratios next to the ideal from weight bytes."""
    if backend != "torch":
        not_yet(f"bench --backend {backend}", "issue 7 (serving harness)")
    from slimdeploy.load.model import load_model
    from slimdeploy.serve.bench import BenchConfig, bench_torch
    from slimdeploy.serve.report import write_bench

    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        raise SlimdeployError(f"--concurrency {concurrency!r}: give positive integers, e.g. 1,4")
    models = {
        "baseline": load_model(baseline, "fp32", with_tokenizer=False).model,
        "candidate": load_model(candidate, "fp32", with_tokenizer=False).model,
    }
    cfg = BenchConfig(input_len=input_len, output_len=output_len, concurrency=levels, repeats=repeats, dtype=dtype)
    with progress_bar("benchmark") as update:
        report = bench_torch(models, cfg, update)
    report["sources"] = {"baseline": baseline or "slimdeploy-demo", "candidate": candidate}
    report["shape_only"] = {k: getattr(m.config, "slimdeploy_shape_only", None) for k, m in models.items()}
    write_bench(report, out)

    def human(r: dict) -> None:
        for c, v in r["models"]["candidate"]["vs_baseline"].items():
            if c == "weight_memory_saved":
                print(f"weight memory saved: {v:.1%}")
            else:
                print(
                    f"concurrency {c}: decode speedup {v['decode_speedup']:.2f}x (ideal {v['ideal_speedup']:.2f}x, "
                    f"{v['fraction_of_ideal']:.0%} of ideal), throughput {v['throughput_speedup']:.2f}x"
                )
        print(f"written to {out}/bench.json and bench.md")

    emit(report, human)


@app.command("check")
def check_cmd(
    report: Annotated[Path, typer.Argument(help="A bench.json to gate.")],
    against: Annotated[Path, typer.Option(help="The saved reference bench.json.")],
    max_slowdown: Annotated[str, typer.Option(help="Allowed slowdown, e.g. 5%.")] = "5%",
) -> None:
    """Exit 1 when the report is slower than the reference beyond the threshold (medians over repeats)."""
    from slimdeploy.serve.gate import check, parse_fraction

    for p in (report, against):
        if not p.exists():
            raise SlimdeployError(f"bench report {p} does not exist; produce it with `slimdeploy bench run`")
    problems = check(json.loads(report.read_text()), json.loads(against.read_text()), parse_fraction(max_slowdown))
    emit(
        {"pass": not problems, "problems": problems},
        lambda r: print("bench check: pass" if r["pass"] else "bench check: FAIL\n  " + "\n  ".join(problems)),
    )
    if problems:
        raise typer.Exit(1)
