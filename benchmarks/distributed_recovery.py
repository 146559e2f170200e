"""Recovery tokens/s and peak RSS per process: 1 process against N torchrun processes, same global batch.

    python benchmarks/distributed_recovery.py [--model zoo:smollm2-135m-instruct] [--nproc 2] [--steps 8]

Runs the same recover + merge recipe twice through the CLI: once as one process (all cores), once under
`torchrun --standalone --nproc-per-node N` (cores split between the ranks: OMP_NUM_THREADS = cores / N).
Reads the recover stage of each report.json (tokens/s over all ranks, peak RSS of every rank) and compares
the merged weights of the two runs. On a CPU the ranks share the same cores and memory bandwidth, so this
measures the overhead of the distributed path, not a speed-up; on N GPUs each rank has its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """\
name: recover-only
stages:
  - kind: recover
    steps: {steps}
    warmup: 0
    batch_size: {batch}
    seq_len: {seq_len}
    bf16: {bf16}
    gradient_checkpointing: true
  - kind: merge
"""


def run(model: str | None, recipe: Path, out: Path, nproc: int) -> tuple[dict, float]:
    cmd = ["-m", "slimdeploy", "--quiet", "compress", "--recipe", str(recipe), "--out", str(out), "--force"]
    cmd += ["--model", model] if model else []
    env = dict(os.environ)
    if nproc > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or nproc) // nproc))
        cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *cmd]
    t0 = time.time()
    proc = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{nproc} process(es) failed: {proc.stderr.strip()[-1500:]}")
    stages = json.loads((out / "report.json").read_text())["stages"]
    return next(s for s in stages if s["kind"] == "recover"), time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the embedded demo")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--out", default="benchmarks/results/distributed_recovery.json")
    args = ap.parse_args()
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="slimdeploy-ddp-") as tmp:
        work = Path(tmp)
        recipe = work / "r.yaml"
        bf16 = "false" if args.fp32 else "true"
        recipe.write_text(RECIPE.format(steps=args.steps, batch=args.batch_size, seq_len=args.seq_len, bf16=bf16))
        rows, weights = [], {}
        for n in (1, args.nproc):
            rec, wall = run(args.model, recipe, work / f"o{n}", n)
            weights[n] = {}
            for f in sorted((work / f"o{n}").glob("*.safetensors")):
                weights[n] |= load_file(f)
            rows.append(
                {
                    "processes": n,
                    "tokens_per_s": rec["tokens_per_s"],
                    "tokens_per_rank": rec["tokens_per_rank"],
                    "recover_seconds": rec["seconds"],
                    "peak_rss_mb_per_rank": rec["peak_rss_mb_per_rank"],
                    "wall_seconds": round(wall, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        one, many = weights[1], weights[args.nproc]
        diff = max((one[k].float() - many[k].float()).abs().max().item() for k in one)
    result = {
        "model": args.model or "slimdeploy-demo",
        "global_batch": f"{args.batch_size} x {args.seq_len} tokens, {args.steps} steps, bf16 autocast {bf16}",
        "machine": f"{os.cpu_count()} CPU cores, gloo",
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "speedup": round(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], 3),
        "merged_weights_max_abs_diff": diff,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
