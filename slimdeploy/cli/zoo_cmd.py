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

    if out.exists() and any(out.iterdir()):
        raise SlimdeployError(f"{out} exists and is not empty; choose another --out")
    with progress_bar("training slimdeploy-demo") as update:
        summary = train_demo(
            work_dir,
            out,
            DemoTrainConfig(steps=steps, threads=threads),
            progress=lambda s, n, loss, rate: update(s, n, loss=loss, tok_s=rate),
        )
    emit({k: v for k, v in summary.items() if k != "history"})
