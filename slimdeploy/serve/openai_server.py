"""vLLM's OpenAI-compatible server as a bench backend: `vllm serve DIR` bound to 127.0.0.1, driven by
concurrent streaming /v1/completions requests (token-id prompts, greedy, EOS ignored).

Each request streams with continuous usage stats, so every chunk says how many tokens exist so far; the
arrival time of a chunk is the time of the tokens it adds (client-side timing, as vLLM's
benchmark_serving does). Same interface as worker.Worker.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.serve.engines import has_tokenizer
from slimdeploy.serve.worker import BackendDied, kill_tree
from slimdeploy.utils.procs import child_env, child_popen_kwargs, kill_group, scratch_dir
from slimdeploy.utils.trust import remote_code_allowed

HOST = "127.0.0.1"


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise SlimdeployError(f"port {port} on {HOST} is in use; pass --port with a free port") from None


class VllmServer:
    def __init__(
        self,
        path: Path,
        dtype: str,
        port: int,
        max_model_len: int,
        startup_timeout: float = 900,
        trust_remote_code: bool = False,
    ):
        self.backend, self.path, self.port = "vllm-server", Path(path), port
        check_port_free(port)
        self.log = tempfile.NamedTemporaryFile(prefix="slimdeploy-vllm-server-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path)]
        cmd += ["--host", HOST, "--port", str(port), "--served-model-name", "m", "--seed", "0"]
        cmd += ["--dtype", {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]]
        cmd += ["--max-model-len", str(max_model_len), "--enforce-eager"]
        if remote_code_allowed(path, trust_remote_code):  # ours (hash-checked) or the user's explicit flag
            cmd.append("--trust-remote-code")
        if not has_tokenizer(path):
            cmd.append("--skip-tokenizer-init")  # shape-only models: token ids in, token ids out
        self.scratch = scratch_dir()  # vLLM's temp files and IPC sockets, removed in close()
        env = child_env(self.scratch, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))
        t0 = time.perf_counter()
        # own process group + SIGTERM if we die: vLLM's server shuts its engine down on SIGTERM
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, **child_popen_kwargs())
        self._wait_healthy(startup_timeout)
        self.load_s = self.load_inside_s = round(time.perf_counter() - t0, 2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 3) -> str:
        self.log.flush()
        lines = [ln for ln in Path(self.log.name).read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])[-400:]

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BackendDied(f"vllm serve {self.path} exited ({self.proc.returncode}): {self.tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        self.close()
        raise SlimdeployError(f"vllm serve {self.path} did not become healthy in {timeout:.0f} s: {self.tail()}")

    def _one(self, prompt: list[int], output_len: int, out: list, slot: int) -> None:
        body = {
            "model": "m",
            "prompt": prompt,
            "max_tokens": output_len,
            "min_tokens": output_len,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        times: list[float] = []
        try:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=600)
            conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise BackendDied(f"vllm serve answered {resp.status}: {resp.read()[:200]!r}")
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                usage = json.loads(line[6:]).get("usage") or {}
                n = usage.get("completion_tokens", len(times))
                times += [time.perf_counter()] * (n - len(times))
        except (OSError, http.client.HTTPException) as exc:
            out[slot] = BackendDied(f"vllm serve {self.path} stopped answering ({exc}): {self.tail()}")
            return
        except BackendDied as exc:
            out[slot] = exc
            return
        out[slot] = times

    def generate(self, prompts: list[list[int]], output_len: int) -> tuple[list[list[float]], float]:
        results: list = [None] * len(prompts)
        threads = [threading.Thread(target=self._one, args=(p, output_len, results, i)) for i, p in enumerate(prompts)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            if isinstance(r, Exception):
                raise r
            if len(r) < output_len:
                raise BackendDied(f"vllm serve {self.path} ended a stream after {len(r)} of {output_len} tokens")
        return results, start

    def close(self) -> None:
        kill_tree(self.proc.pid)
        kill_group(self.proc.pid)
        Path(self.log.name).unlink(missing_ok=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
