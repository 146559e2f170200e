"""Baseline vs candidate, interleaved in one invocation, on any backend.

A runner is anything with `generate(prompts, output_len) -> (token_times, start)`: in-process PyTorch
models (bench_torch) or worker processes / the vLLM server (bench_backend in backends.py). Every repeat runs
baseline then candidate at each concurrency, so drift of the machine hits both alike. Peak RSS of the whole
process tree, and of each runner's own process tree, is sampled by a thread during the runs. A runner that
dies ends the run: what was measured is kept and the report is marked partial.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import psutil
import torch

from slimdeploy.analyze.summary import param_stats
from slimdeploy.errors import SlimdeployError
from slimdeploy.serve.engines import torch_generate_timed
from slimdeploy.serve.metrics import kv_bytes_per_token, ratio_block, spread, summarize_run
from slimdeploy.serve.worker import BackendDied


@dataclass
class BenchConfig:
    input_len: int = 64
    output_len: int = 32
    concurrency: list[int] = field(default_factory=lambda: [1, 4])
    repeats: int = 3
    warmup: int = 1
    dtype: str = "fp32"
    seed: int = 0

    def __post_init__(self):
        for name in ("input_len", "output_len", "repeats"):
            if getattr(self, name) < 1:
                raise SlimdeployError(f"--{name.replace('_', '-')} {getattr(self, name)}: give 1 or more")
        if self.warmup < 0:
            raise SlimdeployError(f"warm-up {self.warmup}: give 0 or more")
        if not self.concurrency or min(self.concurrency) < 1:
            raise SlimdeployError(f"concurrency {self.concurrency}: give positive integers, e.g. 1,4")

    def check_context(self, max_positions: int | None, name: str) -> None:
        """Prompt + generated tokens must fit the model's context."""
        if max_positions and self.input_len + self.output_len > max_positions:
            raise SlimdeployError(
                f"{name}: --input-len {self.input_len} + --output-len {self.output_len} exceeds the model's context "
                f"of {max_positions} tokens; shorten them"
            )


class RssSampler:
    """Peak resident memory of this process and its children, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.05, watch: dict[str, int] | None = None):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.watch = watch or {}  # name -> pid whose own tree is also tracked
        self.peaks = {name: 0 for name in self.watch}
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def tree_rss(pid: int) -> int:
        try:
            p = psutil.Process(pid)
            return p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
        except psutil.Error:
            return 0

    def _run(self) -> None:
        me = psutil.Process().pid
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_rss(me))
            for name, pid in self.watch.items():
                self.peaks[name] = max(self.peaks[name], self.tree_rss(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def request_set(vocab_size: int, n: int, input_len: int, seed: int) -> torch.Tensor:
    """The fixed prompts every model and backend gets: (n, input_len) token ids, seeded."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (n, input_len), generator=g)


def model_facts(model, dtype_bytes: int) -> dict:
    n = param_stats(model)["params"]
    return {
        "params": n,
        "weight_bytes": n * dtype_bytes,
        "kv_bytes_per_token": kv_bytes_per_token(model.config, dtype_bytes),
    }


class InProcessTorch:
    """A loaded transformers model as a runner (no extra process: the recipe's bench stage uses it)."""

    def __init__(self, model):
        self.model = model

    def generate(self, prompts: list[list[int]], output_len: int):
        return torch_generate_timed(self.model, torch.tensor(prompts), output_len)


def bench_torch(models: dict, cfg: BenchConfig, progress=None) -> dict:
    """`models`: name -> loaded model (first = baseline), run in this process."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
    nbytes = torch.finfo(dtype).bits // 8
    for m in models.values():
        m.to(dtype).eval()
    vocab = min(m.config.vocab_size for m in models.values())
    runners = {name: InProcessTorch(m) for name, m in models.items()}
    facts = {name: model_facts(m, nbytes) for name, m in models.items()}
    return run_bench(runners, facts, cfg, vocab, "torch", progress)


def run_bench(runners: dict, facts: dict, cfg: BenchConfig, vocab: int, backend: str, progress=None) -> dict:
    """Interleaved repeats over all concurrency levels; returns the report (schema: bench.json)."""
    names = list(runners)
    results: dict = {n: {c: [] for c in cfg.concurrency} for n in names}
    total = (cfg.warmup + cfg.repeats) * len(cfg.concurrency) * len(names)
    done, error = 0, None
    watch = {n: r.pid for n, r in runners.items() if hasattr(r, "pid")}
    with RssSampler(watch=watch) as rss:
        try:
            for rep in range(cfg.warmup + cfg.repeats):
                for c in cfg.concurrency:
                    prompts = request_set(vocab, c, cfg.input_len, cfg.seed + c).tolist()
                    for name in names:  # interleaved: baseline, candidate, baseline, ...
                        times, start = runners[name].generate(prompts, cfg.output_len)
                        if rep >= cfg.warmup:
                            results[name][c].append(summarize_run(times, start, cfg.input_len))
                        done += 1
                        if progress:
                            progress(done, total)
        except BackendDied as exc:
            error = str(exc)
    report = {"backend": backend, "config": cfg.__dict__, "peak_rss_bytes": rss.peak, "models": {}}
    if error:
        report.update(partial=True, error=error)
    for name in names:
        per_c = {}
        for c, runs in results[name].items():
            if not runs:
                continue
            med = {k: spread([r[k] for r in runs]) for k in ("output_tok_s", "requests_s", "prefill_tok_s")}
            lat = {
                k: {q: spread([r[k][q] for r in runs]) for q in ("p50", "p90", "p99")}
                for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s")
            }
            per_c[str(c)] = {**med, **lat, "runs": runs}
        report["models"][name] = {**facts[name], "concurrency": per_c}
        if name in rss.peaks:
            report["models"][name]["peak_rss_bytes"] = rss.peaks[name]
        for key in ("load_s",):
            if hasattr(runners[name], key):
                report["models"][name][key] = getattr(runners[name], key)
    base = report["models"][names[0]]
    for name in names[1:]:
        cand = report["models"][name]
        ideal = base["weight_bytes"] / cand["weight_bytes"]
        common = [c for c in cand["concurrency"] if c in base["concurrency"]]
        cand["vs_baseline"] = {
            c: ratio_block(_median_run(base["concurrency"][c]), _median_run(cand["concurrency"][c]), ideal)
            for c in common
        }
        cand["weight_memory_saved"] = 1 - cand["weight_bytes"] / base["weight_bytes"]  # not per concurrency
    return report


def _median_run(per_c: dict) -> dict:
    """A pseudo-run holding the medians over repeats, in summarize_run's shape."""
    return {
        "tpot_s": {"p50": per_c["tpot_s"]["p50"]["median"]},
        "ttft_s": {"p50": per_c["ttft_s"]["p50"]["median"]},
        "output_tok_s": per_c["output_tok_s"]["median"],
    }
