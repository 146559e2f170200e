"""One model in one worker process, driven over stdin/stdout with one JSON line per message.

    python -m slimdeploy.serve.worker '{"backend": "vllm", "path": DIR, "dtype": "bf16", "options": {}}'

The worker prints `SLIMDEPLOY_READY {"load_s": ...}` once loaded, then answers each request line
{"prompts": [[ids]], "output_len": N} with `SLIMDEPLOY_RESULT {"times": [[...]], "start": t}`. Runtimes
log freely on stdout/stderr: the parent skips lines without the prefix, and stderr goes to a log file so a
chatty engine cannot block on a full pipe. A worker that dies is reported with the tail of its log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from slimdeploy.errors import SlimdeployError
from slimdeploy.utils.procs import child_env, child_popen_kwargs, kill_group, scratch_dir, take_down_group_on_sigterm

READY, RESULT = "SLIMDEPLOY_READY ", "SLIMDEPLOY_RESULT "


class BackendDied(SlimdeployError):
    """The runtime's process ended (or its server stopped answering) in the middle of a run."""


class Worker:
    """Parent side: start, time, stop. `generate` returns (token_times, start) in the worker's clock."""

    def __init__(self, backend: str, path: Path, dtype: str, options: dict | None = None, timeout: float = 1800):
        self.backend, self.path = backend, Path(path)
        self.log = tempfile.NamedTemporaryFile(prefix=f"slimdeploy-{backend}-", suffix=".log", delete=False)
        spec = {"backend": backend, "path": str(path), "dtype": dtype, "options": options or {}}
        self.scratch = scratch_dir()  # the runtime's temp files and IPC sockets, removed in close()
        env = child_env(self.scratch, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slimdeploy.serve.worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            **child_popen_kwargs(),  # dies with us, even after a kill -9 of this process
        )
        self.timeout = timeout
        ready = self._read(READY)
        self.load_s = round(time.perf_counter() - t0, 2)
        self.load_inside_s = ready["load_s"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, prefix: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return json.loads(line[len(prefix) :])
        self.proc.wait(timeout=30)
        raise BackendDied(f"the {self.backend} worker for {self.path} exited ({self.proc.returncode}): {self.tail()}")

    def tail(self, n: int = 3) -> str:
        self.log.flush()
        lines = [ln for ln in Path(self.log.name).read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])[-400:]

    def generate(self, prompts: list[list[int]], output_len: int) -> tuple[list[list[float]], float]:
        try:
            self.proc.stdin.write(json.dumps({"prompts": prompts, "output_len": output_len}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise BackendDied(f"the {self.backend} worker for {self.path} is gone: {self.tail()}") from None
        out = self._read(RESULT)
        return out["times"], out["start"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, OSError):
                kill_tree(self.proc.pid)
        kill_group(self.proc.pid)  # engine processes the worker left behind
        Path(self.log.name).unlink(missing_ok=True)
        shutil.rmtree(self.scratch, ignore_errors=True)


def kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def _child(spec: dict) -> None:
    from slimdeploy.serve.engines import ENGINES

    take_down_group_on_sigterm()
    t0 = time.perf_counter()
    engine = ENGINES[spec["backend"]](spec["path"], spec["dtype"], spec["options"])
    print(READY + json.dumps({"load_s": round(time.perf_counter() - t0, 2)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        times, start = engine.generate(req["prompts"], req["output_len"])
        print(RESULT + json.dumps({"times": times, "start": start}), flush=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
