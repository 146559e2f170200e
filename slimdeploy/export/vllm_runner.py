"""Run vLLM's offline engine in a child process and return greedy token ids (JSON on stdout).

vLLM starts its engine with spawn and keeps global state, so every use gets a fresh interpreter:
    python -m slimdeploy.export.vllm_runner MODEL_DIR REQUEST.json
REQUEST.json: {"prompts": [[ids...], ...], "max_tokens": N, "dtype": "float32", "max_model_len": 512}
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from slimdeploy.errors import SlimdeployError


def _child(model_dir: str, request_path: str) -> None:
    from slimdeploy.utils.procs import take_down_group_on_sigterm

    take_down_group_on_sigterm()  # the parent died (PR_SET_PDEATHSIG) or gave up: vLLM's engine goes too
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU; small models need little
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    req = json.loads(Path(request_path).read_text())
    llm = LLM(
        model=model_dir,
        dtype=req.get("dtype", "float32"),
        max_model_len=req.get("max_model_len", 512),
        enforce_eager=True,
        trust_remote_code=req.get("trust_remote_code", False),
        seed=0,
        tensor_parallel_size=req.get("tensor_parallel_size", 1),
        **({"distributed_executor_backend": "mp"} if req.get("tensor_parallel_size", 1) > 1 else {}),
    )
    params = SamplingParams(temperature=0.0, max_tokens=req["max_tokens"], ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in req["prompts"]], params, use_tqdm=False)
    print("SLIMDEPLOY_RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]), flush=True)


def cpu_thread_binding(tp: int, env: dict) -> dict:
    """vLLM's CPU workers bind their threads per NUMA node and refuse TP > nodes on a one-node machine
    ("Not enough allowed NUMA nodes"); give each worker its own cores instead: "0|1" for 2 workers on 2
    cores. Ignored by GPU builds; a binding the user set is kept."""
    if env.get("VLLM_CPU_OMP_THREADS_BIND") or cpus_for_tp(tp) is None:
        return {}
    cpus = cpus_for_tp(tp)
    assert cpus is not None
    per = len(cpus) // tp
    groups = [cpus[i * per : (i + 1) * per] for i in range(tp)]
    return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(str(c) for c in g) for g in groups)}


def cpus_for_tp(tp: int) -> list[int] | None:
    """The CPUs this process may use, when there are at least `tp` of them (None: too few)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return cpus if len(cpus) >= tp else None


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def vllm_greedy(
    model_dir: Path,
    prompts: list[list[int]],
    max_tokens: int,
    dtype: str = "float32",
    max_model_len: int = 512,
    trust_remote_code: bool = False,
    timeout: int = 900,
    tensor_parallel_size: int = 1,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts from vLLM (CPU or GPU, whichever vLLM build is installed),
    sharded over `tensor_parallel_size` workers (GPUs; on the CPU build, disjoint sets of cores)."""
    if not vllm_available():
        raise SlimdeployError("vLLM is not installed: pip install 'slimdeploy[cpu]' (or [gpu] on CUDA machines)")
    from slimdeploy.utils.procs import child_env, run_child, scratch_dir

    scratch = scratch_dir()  # TMPDIR and vLLM's IPC sockets; swept by the next run if this one is killed
    try:
        req = scratch / "request.json"
        req.write_text(
            json.dumps(
                {
                    "prompts": prompts,
                    "max_tokens": max_tokens,
                    "dtype": dtype,
                    "max_model_len": max_model_len,
                    "trust_remote_code": trust_remote_code,
                    "tensor_parallel_size": tensor_parallel_size,
                }
            )
        )
        cmd = [sys.executable, "-m", "slimdeploy.export.vllm_runner", str(model_dir), str(req)]
        try:
            env = child_env(scratch)
            if tensor_parallel_size > 1:
                env |= cpu_thread_binding(tensor_parallel_size, env)
            proc = run_child(cmd, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise SlimdeployError(f"vLLM did not finish serving {model_dir} within {timeout} s") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for line in proc.stdout.splitlines():
        if line.startswith("SLIMDEPLOY_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()][-3:]
    raise SlimdeployError(f"vLLM could not serve {model_dir} (exit {proc.returncode}): {' | '.join(tail)[-400:]}")


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
