"""Child processes that die with their parent, and temporary space that is swept after a kill -9.

A killed parent cannot clean up, so the children do it themselves: each starts its own process group and
asks the kernel (PR_SET_PDEATHSIG) for SIGTERM when the parent dies; our own workers answer SIGTERM by
killing their whole group, runtimes' engine processes included. Runtime temporaries (vLLM's IPC sockets
among them) go to a per-process folder named after the owner's pid, removed once that pid is gone.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

PR_SET_PDEATHSIG = 1
SCRATCH_PREFIX = "slimdeploy-rt-"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def child_popen_kwargs() -> dict:
    """Popen/run keyword arguments: own process group + SIGTERM when this process dies."""
    return {"start_new_session": True, "preexec_fn": _die_with_parent}


def take_down_group_on_sigterm() -> None:
    """In a worker: SIGTERM (sent by the kernel when the parent died, or by the parent) kills the worker's
    whole process group, so engine processes a runtime spawned cannot outlive it."""

    def _handler(signum, frame):
        os.killpg(os.getpgid(0), signal.SIGKILL)

    if os.getpgid(0) == os.getpid():  # only a group leader of its own group may take the group down
        signal.signal(signal.SIGTERM, _handler)


def scratch_dir() -> Path:
    """A fresh temp folder for a runtime child (TMPDIR / VLLM_RPC_BASE_PATH); stale ones are swept first."""
    sweep_scratch()
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))


def sweep_scratch() -> list[str]:
    """Remove scratch folders whose owning process no longer exists."""
    import psutil

    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        m = re.match(rf"{SCRATCH_PREFIX}(\d+)-", d.name)
        if m and not psutil.pid_exists(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def child_env(scratch: Path, **extra: str) -> dict:
    return {**os.environ, "TMPDIR": str(scratch), "VLLM_RPC_BASE_PATH": str(scratch), **extra}


def kill_group(pid: int) -> None:
    """SIGKILL a child's whole process group (it leads its own group: see child_popen_kwargs)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_child(cmd: list[str], timeout: float | None = None, env: dict | None = None):
    """subprocess.run with the guards above; on timeout, Ctrl-C or any error the child's group is killed."""
    import subprocess

    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **child_popen_kwargs()
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        kill_group(proc.pid)
        proc.wait()
        raise
    kill_group(proc.pid)  # engine processes the child left behind
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
