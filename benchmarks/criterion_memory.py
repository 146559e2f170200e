"""Peak memory of the LoRAPrune criterion against full-weight Taylor on the same model (issue 8).

    python benchmarks/criterion_memory.py [--model shape:smollm2-135m] [--samples 4] [--seq-len 128]

Each criterion runs in a fresh process; we report peak RSS and the peak above the loaded model (what the
criterion itself costs). LoRAPrune needs no full-weight gradients; Taylor holds one per weight.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def child(model: str, criterion: str, samples: int, seq_len: int) -> None:
    import torch

    from slimdeploy.load.model import load_model
    from slimdeploy.score.api import score

    torch.manual_seed(0)
    loaded = load_model(model, "fp32", with_tokenizer=False)
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batches = torch.randint(3, loaded.model.config.vocab_size, (samples, seq_len))
    score(loaded.model, criterion, batches)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "criterion": criterion,
                "rss_after_load_mb": after_load / 1024,
                "peak_rss_mb": peak / 1024,
                "criterion_extra_mb": (peak - after_load) / 1024,
            }
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shape:smollm2-135m")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/criterion_memory.json")
    ap.add_argument("--child", nargs=1)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.child[0], args.samples, args.seq_len)
        return 0
    rows = []
    for crit in ("taylor", "loraprune"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--samples",
                str(args.samples),
                "--seq-len",
                str(args.seq_len),
                "--child",
                crit,
            ],
            capture_output=True,
            text=True,
        )
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not line:
            print(proc.stderr[-2000:])
            return 1
        rows.append(json.loads(line[-1]))
        print(line[-1], flush=True)
    t, lp = rows
    summary = {
        "model": args.model,
        "rows": rows,
        "loraprune_peak_vs_taylor": lp["peak_rss_mb"] / t["peak_rss_mb"],
        "loraprune_extra_vs_taylor": lp["criterion_extra_mb"] / t["criterion_extra_mb"],
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
