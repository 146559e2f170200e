"""Perplexity before recovery for every criterion x allocation x ratio on stories260K (issue 4's table).

    python benchmarks/prune_quality.py [--shared ../shared/data] [--out benchmarks/results/prune_quality.json]

Calibration: 32 windows x 256 tokens from the first half of the TinyStories dev text (seed 0); evaluation:
the second half, context 512 / stride 256, BOS once (slimdeploy eval's default protocol).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch
from _common import DEFAULT_SHARED, stories260k, write_rows

from slimdeploy.evaluate.perplexity import PerplexityProtocol, perplexity
from slimdeploy.load.data import calibration_batches, token_stream
from slimdeploy.load.model import load_model
from slimdeploy.prune.api import PruneConfig, prune

CRITERIA = ["random", "l1", "l2", "wanda", "flap", "taylor", "loraprune", "surgeon"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=DEFAULT_SHARED)
    ap.add_argument("--out", default="benchmarks/results/prune_quality.json")
    ap.add_argument("--ratios", default="0.2,0.3,0.5")
    ap.add_argument("--criteria", default=",".join(CRITERIA))
    ap.add_argument("--allocations", default="uniform,global")
    ap.add_argument("--eval-tokens", type=int, default=60000)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    found = stories260k(args.shared)
    if found is None:
        return 0
    model_dir, text = found
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_model(str(model_dir), "fp32")
    content = text.read_text()
    half = len(content) // 2
    calib = calibration_batches(token_stream(base.tokenizer, [content[:half]]), 32, 256, seed=0)
    evals = token_stream(base.tokenizer, [content[half:]])[: args.eval_tokens]
    proto = PerplexityProtocol(512, 256)
    dense = perplexity(base.model, evals, proto)["ppl"]
    rows = [{"criterion": "dense", "ppl": dense, "params": sum(p.numel() for p in base.model.parameters())}]
    print(f"dense ppl {dense:.3f}", flush=True)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for allocation in args.allocations.split(","):
            for crit in args.criteria.split(","):
                model = copy.deepcopy(base.model)
                cfg = PruneConfig(
                    ratio=ratio, criterion=crit, allocation=allocation, round_to=4, structures=["mlp", "head", "kv"]
                )
                t0 = time.time()
                rep, _ = prune(model, cfg, calib)
                ppl = perplexity(model, evals, proto)["ppl"]
                row = {
                    "ratio": ratio,
                    "allocation": allocation,
                    "criterion": crit,
                    "ppl": round(ppl, 3),
                    "removed": round(rep["removed_fraction"], 4),
                    "seconds": round(time.time() - t0, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_rows(
        args.out,
        proto,
        rows,
        model="stories260K",
        calibration="32 x 256 tokens, first half of tinystories-valid-dev.txt, seed 0",
        evaluation=f"{len(evals):,} tokens of the second half, context 512, stride 256",
        dense_ppl=round(dense, 3),
        round_to=4,
        structures=["mlp", "head", "kv"],
        note="global rows of l1/l2/wanda/flap use per-layer standardized scores",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
