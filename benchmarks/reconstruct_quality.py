"""What reconstruction after pruning buys before any recovery token (issue 28, part 1), on SmolLM2-135M-Instruct.

    python benchmarks/reconstruct_quality.py [--ratio 0.2] [--shots 3] [--val-tokens 16384] [--ppl-tokens 40960]

One prune (the `20pct` real-model settings: The LLM Surgeon, --shots, heads + MLP, round_to 64, 64 x 512 C4
calibration tokens from c4-demo.jsonl), then each reconstruction variant applied to a copy of that pruned
model. Selection is on a validation slice no reported number uses (the last 300 documents of
c4-redpajama-sample.jsonl, which share none with the calibration file, first --val-tokens tokens); WikiText-2
(`wikitext2` protocol, first --ppl-tokens tokens) is reported for every row and never chooses anything.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_SHARED

from slimdeploy.evaluate.api import evaluate_loaded
from slimdeploy.load.data import calibration_data
from slimdeploy.load.model import load_model
from slimdeploy.prune.api import PruneConfig, prune
from slimdeploy.prune.reconstruct import reconstruct

VARIANTS = [  # (method, target, steps)
    ("none", None, 0),
    ("ridge", "local", 0),
    ("ridge", "stream", 0),
    ("block", "local", 32),
    ("block", "stream", 32),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=DEFAULT_SHARED)
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--val-tokens", type=int, default=16384)
    ap.add_argument("--ppl-tokens", type=int, default=40960)
    ap.add_argument("--out", default="benchmarks/results/reconstruct_quality.json")
    args = ap.parse_args()
    shared = Path(args.shared)
    c4 = shared / "text" / "c4-demo.jsonl"
    if not c4.exists():
        print(f"skipped: {c4} not found (pass --shared)")
        return 0
    val = Path(tempfile.mkdtemp()) / "c4-val.jsonl"  # the last 300 documents: never calibration
    val.write_text("".join((shared / "text" / "c4-redpajama-sample.jsonl").read_text().splitlines(True)[-300:]))
    wiki = str(shared / "eval" / "wikitext-2-raw-test.txt")

    base = load_model("zoo:smollm2-135m-instruct", "fp32")
    tok, dense = base.tokenizer, base.model

    def measure(model) -> dict:
        v = evaluate_loaded(model, tok, str(val), {}, args.val_tokens, batch_size=4)
        w = evaluate_loaded(model, tok, wiki, {}, args.ppl_tokens, batch_size=1, protocol_name="wikitext2")
        return {"val_c4_ppl": v["ppl"], "wikitext2_ppl": w["ppl"], "wikitext2_tokens": w["data"]["tokens"]}

    calib, calib_fp = calibration_data(tok, str(c4), 64, 512, seed=0)
    doc: dict = {
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "host": {"cpu": platform.processor() or platform.machine(), "isa": _isa()},
        "calibration": calib_fp,
        "ratio": args.ratio,
        "shots": args.shots,
        "rows": [{"variant": "dense", **measure(dense)}],
    }
    _save(args.out, doc)
    pruned = copy.deepcopy(dense)
    t0 = time.time()
    cfg = PruneConfig(ratio=args.ratio, criterion="surgeon", round_to=64, shots=args.shots)
    prune(pruned, cfg, calib)
    doc["prune_seconds"] = round(time.time() - t0, 1)
    for method, target, steps in VARIANTS:
        model = copy.deepcopy(pruned)
        t0 = time.time()
        layers = []
        if method != "none":
            layers = reconstruct(model, dense, calib, method, target, steps=steps, lr=1e-4)
        row = {"variant": method if target is None else f"{method}-{target}", "steps": steps}
        row["reconstruct_seconds"] = round(time.time() - t0, 1)
        if layers:
            row["layer_mse_before"] = sum(r["mse_before"] for r in layers) / len(layers)
            row["layer_mse_after"] = sum(r["mse_after"] for r in layers) / len(layers)
        doc["rows"].append({**row, **measure(model)})
        _save(args.out, doc)
        del model
    return 0


def _isa() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def _save(out: str, doc: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc["rows"][-1]), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
