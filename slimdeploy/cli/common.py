"""Shared CLI plumbing: global flags, one-line errors, progress bars, JSON or human output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class GlobalFlags:
    quiet: bool = False
    json: bool = False
    debug: bool = False


FLAGS = GlobalFlags()


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[..., None]]:
    """Yields update(done, total, **fields); silent under --quiet / --json."""
    if FLAGS.quiet or FLAGS.json:
        yield lambda *a, **k: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=_console(),
    )
    task = progress.add_task(description, total=None, info="")
    started = False

    def update(done: int, total: int, **fields: Any) -> None:
        nonlocal started
        if not started:  # drawn at the first update, so input errors found earlier stay a single line
            progress.start()
            started = True
        info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        progress.update(task, completed=done, total=total, info=info)

    try:
        yield update
    finally:
        if started:
            progress.stop()


def _console():
    from rich.console import Console

    return Console(stderr=True)


def emit(result: Any, human: Callable[[Any], None] | None = None) -> None:
    """--json prints the result as JSON on stdout; otherwise `human` renders it (or JSON, indented)."""
    if FLAGS.json:
        sys.stdout.write(json.dumps(result, indent=1, default=str) + "\n")
    elif human is not None:
        human(result)
    else:
        sys.stdout.write(json.dumps(result, indent=1, default=str) + "\n")


def info(message: str) -> None:
    if not (FLAGS.quiet or FLAGS.json):
        _console().print(message)
