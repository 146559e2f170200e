"""Outputs that appear whole or not at all, and never at the cost of what we did not write.

Every directory slimdeploy writes carries `MARKER`, which lists the files written. `--force` replaces only such
a directory that holds nothing else, and never the current directory, one of its parents, the home directory,
`/`, or a directory that holds one of the inputs.
A lock beside each output (fcntl, released when the process dies) keeps two runs out of the same place.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from slimdeploy.errors import SlimdeployError

MARKER = ".slimdeploy-output"
_HELD: set[str] = set()  # lock files this process holds


def _files(path: Path) -> list[str]:
    """Every file and link below `path`, relative, except the marker itself."""
    return sorted(
        str(p.relative_to(path)) for p in path.rglob("*") if (p.is_file() or p.is_symlink()) and p.name != MARKER
    )


def is_ours(path: Path) -> bool:
    """True only for a directory holding our marker and nothing but the files the marker lists.

    A report file of ours (bench.json, prune_report.json, ...) proves nothing: a user's folder may hold one
    (a CI folder's saved reference, a copied report), so only the marker counts, and a file slimdeploy did
    not write (the user's notes beside the weights) makes the whole folder not ours to replace."""
    path = Path(path)
    try:
        meta = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(meta, dict) or meta.get("written_by") != "slimdeploy" or not isinstance(meta.get("files"), list):
        return False
    return set(_files(path)) <= set(meta["files"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give a finished output the user's usual modes: temporary directories (0700) and some writers' temporary
    files (0600: transformers' safetensors) would hide the weights from a serving container's other user."""
    mask = _umask()
    for p in [Path(path), *Path(path).rglob("*")]:
        if p.is_symlink():
            continue
        keep_exec = p.is_dir() or bool(p.stat().st_mode & 0o111)
        p.chmod((0o777 if keep_exec else 0o666) & ~mask)


def write_marker(path: Path, what: str) -> None:
    """Mark `path` as ours, listing every file in it now (--force may later replace exactly these), and give
    it the user's usual file modes: the marker is the last thing written into a finished output."""
    from slimdeploy import __version__

    path = Path(path)
    meta = {"written_by": "slimdeploy", "version": __version__, "what": what, "files": _files(path)}
    (path / MARKER).write_text(json.dumps(meta, indent=1))
    apply_umask(path)


def _local_inputs(inputs: Iterable[str | Path | None]) -> list[Path]:
    paths = []
    for spec in inputs:
        if spec is None or str(spec).startswith(("hf:", "shape:", "zoo:")):
            continue
        p = Path(spec).expanduser()
        if p.exists():
            paths.append(p.resolve())
    return paths


def _protected_reason(target: Path, inputs: list[Path]) -> str | None:
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "it is the filesystem root"
    if target == Path.home().resolve():
        return "it is your home directory"
    if target == cwd or target in cwd.parents:
        return "it is the current directory or one of its parents"
    for p in inputs:
        if p == target or target in p.parents:
            return f"it holds an input ({p})"
    return None


def check_output(out: Path, force: bool = False, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse, before any work starts, an output path we may not create or replace. Returns it expanded."""
    out = Path(out).expanduser()
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SlimdeployError(f"output {out} exists and is not a directory; choose a new directory path")
    target = out.resolve()
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SlimdeployError(f"output {out} cannot be created: {ancestor} is a file; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SlimdeployError(f"output {out} cannot be created: {ancestor} is not writable; choose another path")
    inputs_ = _local_inputs(inputs)
    for p in inputs_:
        if p.is_dir() and p in target.parents:
            raise SlimdeployError(f"refusing to write output {out} inside the input {p}; choose a path outside it")
    if out.exists():
        reason = _protected_reason(target, inputs_)
        if reason:
            raise SlimdeployError(f"refusing to replace {out}: {reason}; choose a new directory for --out")
        if not force:
            raise SlimdeployError(f"output {out} already exists; choose another path or pass --force")
        if not is_ours(out):
            raise SlimdeployError(
                f"--force replaces only directories slimdeploy wrote, and {out} has no {MARKER} or holds files "
                "slimdeploy did not write; move it away or choose another --out"
            )
    return out


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside `out` for the block: a second run on the same output fails at once."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    key = str(lock_path.resolve())
    if key in _HELD:  # re-entrant: a stage that already holds the lock writes through atomic_dir
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SlimdeployError(
                f"another slimdeploy run (pid {holder}) is using {out}; wait for it or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            lock_path.unlink(missing_ok=True)  # still held: nobody else can be between open and flock on it
    finally:
        os.close(fd)


def sweep_partials(out: Path) -> list[str]:
    """Remove `.<name>.partial-*` left beside `out` by killed runs (call with the output's lock held)."""
    out = Path(out)
    removed = []
    if out.parent.is_dir():
        for stale in out.parent.glob(f".{out.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale.name)
    return removed


@contextmanager
def atomic_dir(out: Path, force: bool = False, inputs: Iterable[str | Path | None] = (), what: str = "output"):
    """Yield a temporary directory beside `out`; it becomes `out` (with our marker) only if the block finishes.

    The output's lock is held throughout, so stale temporaries of killed runs can be swept safely.
    """
    out = check_output(out, force, inputs)
    with output_lock(out):
        sweep_partials(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            yield tmp
            write_marker(tmp, what)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        check_output(out, force, inputs)  # the block may have run for hours: re-check before replacing
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)


def fresh_dir(folder: Path) -> Path:
    """`folder` emptied (removed if it exists, then created): a stage's scratch space inside the work dir."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    return folder
