"""Perplexity of a model quantized by RTN and by GPTQ, W8A8 and W4A16, against the unquantized model.

    python benchmarks/quantize_quality.py [--model zoo:smollm2-135m-instruct] [--data WIKITEXT_RAW]
        [--protocol wikitext2] [--n-samples 32] [--seq-len 256] [--out benchmarks/results/quantize_quality.json]

Each row quantizes the same model with `slimdeploy quantize` (calibration: the demo corpus' calibration split
or --calib) and evaluates the written checkpoint as transformers runs it (dequantized weights; W8A8 also
quantizes activations per token), on the same evaluation text as the dense row. The quantized folders live
under --work and are reused when present. The host (CPU capability) is recorded: it does not change these
numbers, only how long they took.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROWS = [("w8a8", "rtn"), ("w8a8", "gptq"), ("w4a16", "rtn"), ("w4a16", "gptq")]


def cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "slimdeploy", "--json", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"slimdeploy {' '.join(args[:2])} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def evaluate(model: str, args) -> dict:
    extra = ["--data", args.data, "--protocol", args.protocol] if args.data else []
    if args.protocol == "sliding" and args.max_tokens:
        extra += ["--max-tokens", str(args.max_tokens)]
    t0 = time.perf_counter()
    r = cli("eval", "--model", model, *extra)
    return {"ppl": r["ppl"], "tokens": r["tokens_scored"], "eval_s": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the embedded demo")
    ap.add_argument("--data", default=None, help="evaluation text (default: the demo held-out split)")
    ap.add_argument("--protocol", default="sliding")
    ap.add_argument("--max-tokens", type=int, default=60000, help="sliding protocol: score this many tokens")
    ap.add_argument("--calib", default=None, help="calibration text (default: the demo calibration split)")
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--work", default=".cache/quantize_quality")
    ap.add_argument("--out", default="benchmarks/results/quantize_quality.json")
    args = ap.parse_args()
    model = args.model or "slimdeploy-demo"
    work = Path(args.work) / model.replace(":", "_").replace("/", "_")
    work.mkdir(parents=True, exist_ok=True)
    rows = [{"scheme": "dense", "method": None, **evaluate(model, args)}]
    print(rows[-1], flush=True)
    for scheme, method in ROWS:
        out = work / f"{scheme}-{method}"
        t0 = time.perf_counter()
        if not (out / "quantize_report.json").exists():
            q = ["quantize", model, "--out", str(out), "--scheme", scheme, "--method", method]
            q += ["--n-samples", str(args.n_samples), "--seq-len", str(args.seq_len)]
            cli(*q, *(["--data", args.calib] if args.calib else []))
        report = json.loads((out / "quantize_report.json").read_text())
        row = {"scheme": scheme, "method": method, "quantize_s": round(time.perf_counter() - t0, 1)}
        row |= {"weight_file_bytes": report["weight_file_bytes"]["after"], **evaluate(str(out), args)}
        row["ppl_vs_dense"] = round(row["ppl"] / rows[0]["ppl"], 4)
        rows.append(row)
        print(row, flush=True)
    result = {
        "model": model,
        "eval": {"data": args.data or "demo held-out split", "protocol": args.protocol, "max_tokens": args.max_tokens},
        "calibration": {"data": args.calib or "demo calibration split", "n_samples": args.n_samples,
                        "seq_len": args.seq_len},
        "host": {"cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout,
        "rows": rows,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
