"""Serving target: a uniformly pruned (20%) Llama-3.2-1B-shaped model against its dense original, decode
speedup as a fraction of the ideal (dense weight bytes / pruned weight bytes), on vLLM (CPU, bf16) and
onnxruntime-genai (CPU, fp32), concurrency 1 and 8.

Random weights with the real shapes (`shape:llama-3.2-1b`, labelled shape-only in every report): speed does
not depend on the weights' values. Each backend is one `slimdeploy bench run` (baseline and candidate
interleaved in the same invocation).

    python benchmarks/serving_target.py [--work DIR] [--backends vllm,ort-genai] [--out results/serving_target.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DTYPE = {"vllm": "bf16", "vllm-server": "bf16", "ort-genai": "fp32", "onnxruntime": "fp32", "torch": "bf16"}


def build_pair(shape: str, ratio: float, work: Path) -> tuple[Path, Path]:
    import torch

    from slimdeploy.prune.api import PruneConfig, prune
    from slimdeploy.zoo.shapes import shape_model

    dense, pruned = work / "dense", work / "pruned"
    if (pruned / "config.json").exists():
        return dense, pruned
    model = shape_model(shape)
    model.to(torch.bfloat16).save_pretrained(dense)  # bf16 on disk: half the bytes, same shapes
    model.float()
    # uniform widths, MLP channels rounded to 64 and whole heads: shapes every runtime handles
    prune(model, PruneConfig(ratio=ratio, criterion="l2", round_to=64, structures=["mlp", "head"]), None)
    model.to(torch.bfloat16).save_pretrained(pruned)
    return dense, pruned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--work", default="/tmp/slimdeploy-serving-target")
    ap.add_argument("--backends", default="vllm,ort-genai")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serving_target.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dense, pruned = build_pair(args.shape, args.ratio, work)
    rows = []
    for backend in args.backends.split(","):
        out = work / f"bench-{backend}"
        cmd = [sys.executable, "-m", "slimdeploy", "--json", "bench", "run", str(pruned), "--baseline", str(dense)]
        cmd += ["--backend", backend, "--dtype", DTYPE[backend], "--concurrency", args.concurrency]
        cmd += ["--input-len", str(args.input_len), "--output-len", str(args.output_len)]
        cmd += ["--repeats", str(args.repeats), "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"backend": backend, "error": proc.stderr.strip().splitlines()[-1:]})
            print(backend, "failed:", proc.stderr.strip().splitlines()[-1:])
            continue
        report = json.loads((out / "bench.json").read_text())
        cand = report["models"]["candidate"]
        for c, v in cand["vs_baseline"].items():
            row = {"backend": backend, "dtype": DTYPE[backend], "concurrency": int(c), **v}
            row["tpot_ms"] = {
                n: m["concurrency"][c]["tpot_s"]["p50"]["median"] * 1e3 for n, m in report["models"].items()
            }
            rows.append(row)
            print(
                f"{backend} c={c}: decode {v['decode_speedup']:.3f}x, ideal {v['ideal_speedup']:.3f}x, "
                f"{v['fraction_of_ideal']:.1%} of ideal",
                flush=True,
            )
        rows.append(
            {"backend": backend, "seconds": round(time.perf_counter() - t0), "bench_md": (out / "bench.md").read_text()}
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"shape": args.shape, "shape_only": True, "ratio": args.ratio, "args": vars(args), "rows": rows}, indent=1
        )
    )
    print("written", args.out)


if __name__ == "__main__":
    main()
