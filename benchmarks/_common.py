"""Shared bits of the benchmark scripts: where the shared data lives, and writing results."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_SHARED = str(Path(__file__).resolve().parents[2] / "shared" / "data")


def stories260k(shared: str) -> tuple[Path, Path] | None:
    """(model dir, TinyStories dev text) under `shared`, or None (the caller prints a skip reason)."""
    root = Path(shared)
    model_dir, text = root / "models/stories260K", root / "text/tinystories-valid-dev.txt"
    if not model_dir.exists() or not text.exists():
        print(f"skipped: {model_dir} or {text} not found (pass --shared)")
        return None
    return model_dir, text


def write_rows(out: str, protocol, rows: list[dict], **extra) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"protocol": protocol.__dict__, **extra, "rows": rows}, indent=1))
