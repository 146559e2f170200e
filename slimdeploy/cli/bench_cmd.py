"""`slimdeploy bench run | check`: serving measurements against the unpruned baseline, and the CI gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from slimdeploy.cli.common import emit, progress_bar
from slimdeploy.errors import SlimdeployError

app = typer.Typer(help="Latency, memory and throughput against the baseline; a regression gate.", no_args_is_help=True)


@app.command("run")
def run_cmd(
    candidate: Annotated[str, typer.Argument(help="The compressed model directory.")],
    baseline: Annotated[Optional[str], typer.Option(help="The unpruned model (default: the demo).")] = None,
    backend: Annotated[str, typer.Option(help="torch | onnxruntime | ort-genai | vllm | vllm-server")] = "torch",
    input_len: Annotated[int, typer.Option(help="Prompt tokens per request.")] = 64,
    output_len: Annotated[int, typer.Option(help="Generated tokens per request (EOS ignored).")] = 32,
    concurrency: Annotated[str, typer.Option(help="Comma list of concurrency levels.")] = "1,4",
    repeats: Annotated[int, typer.Option(help="Measured repeats (after one warm-up).")] = 3,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 (what the backend supports)")] = "fp32",
    port: Annotated[int, typer.Option(help="vllm-server: first port on 127.0.0.1 (baseline; candidate +1).")] = 8000,
    threads: Annotated[Optional[int], typer.Option(help="torch/onnx workers: intra-op threads.")] = None,
    out: Annotated[Path, typer.Option(help="Where to write bench.json, bench.md and bench.png.")] = Path("bench-out"),
    max_slowdown: Annotated[
        Optional[str], typer.Option(help="Live gate: exit 1 when the candidate is slower than the baseline by more.")
    ] = None,
) -> None:
    """Baseline and candidate, interleaved in one invocation; ratios next to the ideal from weight bytes."""
    from slimdeploy.serve.backends import check_backend
    from slimdeploy.serve.bench import BenchConfig
    from slimdeploy.serve.gate import check, parse_fraction
    from slimdeploy.serve.report import write_bench

    allowed = parse_fraction(max_slowdown) if max_slowdown is not None else None  # bad threshold: before loading
    check_backend(backend)
    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        raise SlimdeployError(f"--concurrency {concurrency!r}: give positive integers, e.g. 1,4")
    if dtype not in ("fp32", "bf16", "fp16") or (backend == "torch" and dtype == "fp16"):
        raise SlimdeployError(f"--dtype {dtype!r}: torch takes fp32 or bf16, onnxruntime fp32 or fp16, vllm any")
    cfg = BenchConfig(input_len=input_len, output_len=output_len, concurrency=levels, repeats=repeats, dtype=dtype)
    sources = {"baseline": baseline, "candidate": candidate}
    with progress_bar("benchmark") as update:
        report = _measure(sources, backend, cfg, update, port, threads, out)
    report["sources"] = {"baseline": baseline or "slimdeploy-demo", "candidate": candidate}
    problems = []
    if allowed is not None and not report.get("partial"):
        problems = check(report, report, allowed, "candidate", "baseline")
        report["gate"] = {"max_slowdown": allowed, "pass": not problems, "problems": problems}
    write_bench(report, out)
    if report.get("partial"):
        raise SlimdeployError(f"the run stopped early: {report['error']} (partial results in {out}/bench.json)")

    def human(r: dict) -> None:
        for c, v in r["models"]["candidate"]["vs_baseline"].items():
            if c == "weight_memory_saved":
                print(f"weight memory saved: {v:.1%}")
            else:
                print(
                    f"concurrency {c}: decode speedup {v['decode_speedup']:.2f}x (ideal {v['ideal_speedup']:.2f}x, "
                    f"{v['fraction_of_ideal']:.0%} of ideal), throughput {v['throughput_speedup']:.2f}x"
                )
        print(f"written to {out}/bench.json, bench.md and bench.png")
        if r.get("gate"):
            print("live gate (candidate vs baseline): " + ("pass" if r["gate"]["pass"] else "FAIL"))
            for p in r["gate"]["problems"]:
                print(f"  {p}")

    emit(report, human)
    if problems:
        raise typer.Exit(1)


def _measure(sources: dict, backend: str, cfg, update, port: int, threads, out: Path) -> dict:
    """torch runs in this process; every other backend in one worker process (or server) per model."""
    import shutil
    import tempfile

    from slimdeploy.load.model import load_model, resolve_source

    if backend == "torch":
        from slimdeploy.serve.bench import bench_torch

        models = {k: load_model(v, "fp32", with_tokenizer=False).model for k, v in sources.items()}
        report = bench_torch(models, cfg, update)
        report["shape_only"] = {k: getattr(m.config, "slimdeploy_shape_only", None) for k, m in models.items()}
        return report
    from slimdeploy.serve.backends import bench_backend

    dirs = {}
    for name, spec in sources.items():
        kind, location = resolve_source(spec)
        if kind not in ("demo", "dir"):
            raise SlimdeployError(f"the {backend} backend takes model directories; {spec} is a {kind} source")
        dirs[name] = Path(location)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bench-runtime-", dir=out.parent))
    try:
        report = bench_backend(dirs, backend, cfg, work, update, port, threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["shape_only"] = {k: v.pop("shape_only", None) for k, v in report["models"].items()}
    return report


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
