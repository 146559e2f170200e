"""Serving metrics as pure functions: percentiles, per-run summaries, ratios against the baseline.

Method (as vLLM's benchmark_serving and optimum-benchmark): fixed input and output lengths with EOS ignored,
warm-up runs excluded, TTFT = time to the first generated token (includes prefill), TPOT = (e2e - TTFT) /
(output tokens - 1), inter-token latencies = gaps between consecutive tokens, throughput = generated tokens /
wall time at a given concurrency, prefill tokens/s = prompt tokens / TTFT.
"""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]), as numpy's default."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize_run(token_times: list[list[float]], start: float, input_len: int) -> dict:
    """One run of `len(token_times)` concurrent requests; token_times[r] = absolute times of r's tokens."""
    ttft = [t[0] - start for t in token_times]
    e2e = [t[-1] - start for t in token_times]
    itl = [b - a for t in token_times for a, b in zip(t, t[1:])]
    tpot = [(t[-1] - t[0]) / max(1, len(t) - 1) for t in token_times]
    wall = max(e2e)
    n_out = sum(len(t) for t in token_times)
    return {
        "ttft_s": {"p50": percentile(ttft, 50), "p90": percentile(ttft, 90), "p99": percentile(ttft, 99)},
        "tpot_s": {"p50": percentile(tpot, 50), "p90": percentile(tpot, 90), "p99": percentile(tpot, 99)},
        "itl_s": {"p50": percentile(itl, 50), "p90": percentile(itl, 90), "p99": percentile(itl, 99)},
        "e2e_s": {"p50": percentile(e2e, 50), "p90": percentile(e2e, 90), "p99": percentile(e2e, 99)},
        "output_tok_s": n_out / wall,
        "requests_s": len(token_times) / wall,
        "prefill_tok_s": len(token_times) * input_len / max(ttft),
    }


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """K and V of every layer for one token (per-layer KV head counts respected)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    widths = getattr(config, "slimdeploy_layer_widths", None)
    kv = [w["kv_heads"] for w in widths] if widths else [config.num_key_value_heads] * config.num_hidden_layers
    return 2 * sum(kv) * head_dim * dtype_bytes


def ratio_block(baseline: dict, candidate: dict, ideal: float) -> dict:
    """Speedups (>1 = candidate faster) and memory saved, next to the ideal from weight bytes."""
    return {
        "decode_speedup": baseline["tpot_s"]["p50"] / candidate["tpot_s"]["p50"],
        "throughput_speedup": candidate["output_tok_s"] / baseline["output_tok_s"],
        "ttft_speedup": baseline["ttft_s"]["p50"] / candidate["ttft_s"]["p50"],
        "ideal_speedup": ideal,
        "fraction_of_ideal": (baseline["tpot_s"]["p50"] / candidate["tpot_s"]["p50"]) / ideal,
    }
