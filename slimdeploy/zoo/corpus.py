"""The demo corpus: the running interpreter's standard library sources.

Every machine that runs slimdeploy has it, it needs no download, and it is real text (Python code and
docstrings) under the PSF licence. Files are split into train / calibration / held-out evaluation by a hash
of their path relative to the stdlib root, so the split is the same on every machine with the same Python
version, and a fingerprint (file list + sizes) says exactly which corpus a result used.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "calibration", "eval")
MAX_FILE_BYTES = 400_000  # a few generated tables (e.g. pydoc_data/topics.py) are not code worth learning


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relpath: str) -> str:
    """90% train, 5% calibration, 5% held-out eval, by a stable hash of the path."""
    bucket = int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % 100
    if bucket < 90:
        return "train"
    return "calibration" if bucket < 95 else "eval"


@dataclass(frozen=True)
class CorpusFile:
    relpath: str
    size: int
    split: str


def list_files(root: Path | None = None) -> list[CorpusFile]:
    root = root or stdlib_root()
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0] in ("site-packages", "dist-packages") or "__pycache__" in rel:
            continue
        size = path.stat().st_size
        if size == 0 or size > MAX_FILE_BYTES:
            continue
        out.append(CorpusFile(rel, size, split_of(rel)))
    return out


def read_split(split: str, root: Path | None = None) -> list[str]:
    """Texts of one split, in path order. Files that are not valid UTF-8 (a few encoding tests) are skipped."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = root or stdlib_root()
    texts = []
    for f in list_files(root):
        if f.split != split:
            continue
        try:
            texts.append((root / f.relpath).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def fingerprint(root: Path | None = None) -> dict:
    """What a result needs to say about its data: python version, file count and a hash per split."""
    files = list_files(root)
    out: dict = {"source": "python-stdlib", "python": sys.version.split()[0]}
    for split in SPLITS:
        chosen = [f for f in files if f.split == split]
        digest = hashlib.sha256(json.dumps([(f.relpath, f.size) for f in chosen]).encode()).hexdigest()
        out[split] = {"files": len(chosen), "bytes": sum(f.size for f in chosen), "sha256": digest[:16]}
    return out
