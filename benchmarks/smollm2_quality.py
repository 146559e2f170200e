"""SmolLM2-135M-Instruct at 20/30/50% removed: WikiText-2 perplexity and zero-shot accuracy, ours against an
LLM-Pruner-equivalent run at the same token budget (issue 13's table).

    python benchmarks/smollm2_quality.py [--ratios 0.2,0.3,0.5] [--methods ours,llm-pruner]
        [--recover-tokens 614400] [--ppl-tokens 40960] [--limit 500] [--shots 1]
        [--allocation uniform] [--update auto] [--attn-share S] [--kd-weight 0.5] [--rank 16]
        [--interleave] [--pruned-only]

Model: `zoo:smollm2-135m-instruct` (fetched once from its PyPI wheel). Methods, same structures (query heads
+ MLP channels, uniform widths, round_to 64) and the same recovery token budget:
  ours        : The LLM Surgeon (K-FAC OBS costs + weight update, --shots) on C4 calibration, LoRA r16 with
                0.5 LM + 0.5 KL to the unpruned teacher on C4 + Alpaca (chat template)
  llm-pruner  : first-order Taylor (LLM-Pruner's criterion) on the same calibration, LoRA r16 with LM loss
                only on the Alpaca data, as LLM-Pruner recovers
--shots / --allocation / --update / --attn-share / --kd-weight / --interleave vary `ours` only, --rank both (rows
record them); --interleave recovers after every shot (The LLM Surgeon's interleaved low-rank updates);
--pruned-only stops after pruning and measures perplexity alone (a quick probe of pruning settings, ~6 min
a row instead of ~30).
Evaluation never touches recovery text: WikiText-2 raw test under the `wikitext2` protocol (first
--ppl-tokens tokens, stated), ARC-Easy / PIQA / BoolQ 0-shot through lm-eval on seeded subsets of --limit
documents (standard errors from lm-eval). Rows are appended to the results JSON as they finish, and each
pruned model is kept with its evaluation under --work, so an interrupted run resumes with --resume from
its last finished row, or from the pruned model when it died during recovery (rows that differ only in
recovery settings share that pruned model too). BoolQ in ../shared had label 1 on every row until
2026-12-07 (rows measured before then measure a yes-bias; docs/evaluation.md): the means are given with and
without it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from _common import DEFAULT_SHARED

from slimdeploy.evaluate.api import evaluate_loaded
from slimdeploy.evaluate.zeroshot import zero_shot
from slimdeploy.load.checkpoint import save_model
from slimdeploy.load.data import calibration_data
from slimdeploy.load.model import load_model
from slimdeploy.merge.api import merge
from slimdeploy.prune.api import PruneConfig, prune
from slimdeploy.recover.config import RecoverConfig
from slimdeploy.recover.train import recover
from slimdeploy.utils.fs import atomic_dir

TASKS = ["arc_easy", "piqa", "boolq"]


def perplexity(model, tok, shared: Path, args) -> dict:
    wiki = str(shared / "eval" / "wikitext-2-raw-test.txt")
    return evaluate_loaded(model, tok, wiki, {}, args.ppl_tokens, batch_size=1, protocol_name="wikitext2")


def evaluate(model, tok, shared: Path, args) -> dict:
    t0 = time.time()
    ppl = perplexity(model, tok, shared, args)
    zs = zero_shot(model, tok, TASKS, shared / "eval", args.limit, batch_size=16, seed=0)
    accs = {t: zs["tasks"][t]["acc"] for t in TASKS}
    return {
        "wikitext2_ppl": ppl["ppl"],
        "ppl_tokens": ppl["tokens_scored"],
        "acc": accs,
        "acc_stderr": {t: zs["tasks"][t]["acc_stderr"] for t in TASKS},
        "mean_acc": sum(accs.values()) / len(accs),
        "mean_acc_without_boolq": (accs["arc_easy"] + accs["piqa"]) / 2,
        "eval_seconds": round(time.time() - t0, 1),
    }


def row_key(r: dict) -> tuple:
    """Rows are unique per method, ratio and variant (older rows lack the later fields: their defaults)."""
    variant = (
        r.get("allocation", "uniform"),
        r.get("update", "auto"),
        r.get("kd_weight", 0.5 if r["method"] == "ours" else 0.0),
        r.get("attn_share"),
        r.get("rank", 16),
        r.get("interleave", False),
    )
    return (r["method"], r.get("ratio"), r.get("shots", 1), *variant, r.get("pruned_only", False))


def stage_name(method: str, ratio: float, variant: dict, args) -> str:
    """A folder name for one row's pruned model: what decides the pruning and its evaluation, not the recovery
    settings, so rows that differ only in recovery (--kd-weight, --lr, tokens) share one pruned model."""
    pruning = [variant[k] for k in ("shots", "allocation", "update", "attn_share")]
    parts = [method, ratio, *pruning, args.ppl_tokens, args.limit]
    return "_".join(str(p) for p in parts)


def keep_stage(stage: Path, model, tok, saved: list) -> None:
    """Save the pruned model and its evaluation, whole or not at all, so a run killed during recovery
    resumes after the hour of pruning and evaluation it already did."""
    stage.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(stage, force=True, what="pruned model (smollm2_quality)") as tmp:
        save_model(model, tok, tmp)
        (tmp / "pruned.json").write_text(json.dumps(saved))


def interleaved(teacher, tok, calib, ratio: float, variant: dict, rcfg: RecoverConfig, p0: int, shared, args) -> tuple:
    """The LLM Surgeon's multi-shot with interleaved LoRA updates: after each shot, LoRA on a 1/shots share of
    the recovery tokens (own seed, so other batches), merged before the next shot re-estimates curvature.
    Returns what main() writes a row from: (merged model, head, pruned, recovery report, seconds x 2)."""
    k = variant["shots"]
    model, prune_s, recover_s, widths = copy.deepcopy(teacher), 0.0, 0.0, {}
    for shot in range(1, k + 1):
        now = sum(p.numel() for p in model.parameters())
        t0 = time.time()
        pcfg = PruneConfig(
            ratio=1 - p0 * (1 - ratio * shot / k) / now, criterion="surgeon", structures=["mlp", "head"],
            round_to=64, allocation=variant["allocation"], update=variant["update"],
            attn_share=variant["attn_share"], seed=shot,
        )  # fmt: skip
        widths = prune(model, pcfg, calib)[0]["widths"]
        prune_s += time.time() - t0
        if shot == k:  # the last shot, before its recovery: perplexity only (the row's "pruned")
            pruned = {"wikitext2_ppl": perplexity(model, tok, shared, args)["ppl"]}
        t1 = time.time()
        part = rcfg.model_copy(update={"tokens": rcfg.tokens // k, "seed": shot, "warmup": max(1, rcfg.warmup // k)})
        rep = (res := recover(model, tok, part, teacher=teacher)).report
        model = merge(res.model, calib[:1, :128])[0]
        recover_s += time.time() - t1
        print(f"shot {shot}/{k}: {sum(p.numel() for p in model.parameters()) / p0:.3f} kept", flush=True)
    head = {"method": "ours", "ratio": ratio, "criterion": "surgeon", **variant, "widths": widths}
    head["kept"] = sum(p.numel() for p in model.parameters()) / p0
    return model, head, pruned, {**rep, "tokens": rep["tokens"] * k}, prune_s, recover_s


def pruned_once(base_model, tok, calib, method: str, ratio: float, variant: dict, p0: int, shared, args) -> tuple:
    """Prune a copy of the dense model in one call (all its shots) and evaluate it, or reuse what an earlier run
    kept under --work: (pruned model, head, pruned evaluation, pruning seconds)."""
    stage = Path(args.work) / stage_name(method, ratio, variant, args)
    if (stage / "pruned.json").exists():  # pruned and evaluated by an interrupted run: reuse both
        model = load_model(str(stage), "fp32").model
        head, pruned, prune_s = json.loads((stage / "pruned.json").read_text())
        head.update(variant)  # the recovery settings are this run's
        print(f"reusing the pruned model and its evaluation in {stage}", flush=True)
    else:
        model = copy.deepcopy(base_model)
        t0 = time.time()
        criterion = "surgeon" if method == "ours" else "taylor"
        pcfg = PruneConfig(
            ratio=ratio, criterion=criterion, structures=["mlp", "head"], round_to=64,
            shots=variant["shots"], allocation=variant["allocation"], update=variant["update"],
            attn_share=variant["attn_share"],
        )  # fmt: skip
        report, _ = prune(model, pcfg, calib)
        prune_s = time.time() - t0
        head = {"method": method, "ratio": ratio, "criterion": pcfg.criterion, **variant}
        head["kept"] = sum(p.numel() for p in model.parameters()) / p0
        head["widths"] = report["widths"]
        if args.pruned_only:
            pruned = {"wikitext2_ppl": perplexity(model, tok, shared, args)["ppl"]}
        else:
            pruned = evaluate(model, tok, shared, args)
            keep_stage(stage, model, tok, [head, pruned, prune_s])
    return model, head, pruned, prune_s


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=DEFAULT_SHARED)
    ap.add_argument("--ratios", default="0.2,0.3,0.5")
    ap.add_argument("--methods", default="ours,llm-pruner")
    ap.add_argument("--recover-tokens", type=int, default=614_400)
    ap.add_argument("--ppl-tokens", type=int, default=40_960)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--shots", type=int, default=1, help="surgeon shots for `ours` (rows keep their shots)")
    ap.add_argument("--allocation", default="uniform", choices=["uniform", "global"], help="for `ours`")
    ap.add_argument("--update", default="auto", choices=["auto", "cols", "both", "none"], help="surgeon OBS update")
    ap.add_argument("--attn-share", type=float, help="share of the removal from attention (default: its size)")
    ap.add_argument("--kd-weight", type=float, default=0.5, help="KL share of the recovery loss for `ours`")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank of the recovery (both methods; alpha 2 x rank)")
    ap.add_argument(
        "--interleave", action="store_true", help="ours: LoRA recovery after every surgeon shot (tokens split)"
    )
    ap.add_argument("--pruned-only", action="store_true", help="no recovery, perplexity only (probe)")
    ap.add_argument("--out", default="benchmarks/results/smollm2_quality.json")
    ap.add_argument("--work", default=".cache/smollm2_bench", help="pruned models kept for --resume")
    ap.add_argument("--resume", action="store_true", help="keep rows already in --out")
    args = ap.parse_args()
    if args.interleave and args.pruned_only:
        print("--interleave recovers between shots; it cannot be --pruned-only")
        return 2
    shared = Path(args.shared)
    if not (shared / "eval" / "wikitext-2-raw-test.txt").exists():
        print(f"skipped: {shared}/eval not found (pass --shared)")
        return 0
    out = Path(args.out)
    doc = json.loads(out.read_text()) if args.resume and out.exists() else {"settings": vars(args), "rows": []}
    same = ("recover_tokens", "ppl_tokens", "limit", "lr")  # rows are comparable only at equal budgets
    if any(doc["settings"].get(k) != getattr(args, k) for k in same):
        print(f"--resume: {args.out} was made with other settings ({', '.join(same)}); pass the same or a new --out")
        return 2
    done = {row_key(r) for r in doc["rows"]}

    def save(row: dict) -> None:
        doc["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1))
        print(json.dumps(row), flush=True)

    base = load_model("zoo:smollm2-135m-instruct", "fp32")
    tok = base.tokenizer
    p0 = sum(p.numel() for p in base.model.parameters())
    if not any(r["method"] == "dense" for r in doc["rows"]):
        save({"method": "dense", "ratio": None, "params": p0, **evaluate(base.model, tok, shared, args)})
    c4, alpaca = str(shared / "text" / "c4-demo.jsonl"), str(shared / "instruct" / "alpaca-en-demo-999.json")
    calib, calib_fp = calibration_data(tok, c4, 64, 512, seed=0)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for method in args.methods.split(","):
            ours = method == "ours"
            variant = {  # LLM-Pruner prunes in one shot, uniformly, and recovers on the LM loss alone
                "shots": args.shots if ours else 1,
                "allocation": args.allocation if ours else "uniform",
                "update": args.update if ours else "auto",
                "kd_weight": args.kd_weight if ours else 0.0,
                "attn_share": args.attn_share if ours else None,
                "rank": args.rank,
                "pruned_only": args.pruned_only,
                "interleave": args.interleave and ours,
            }
            if row_key({"method": method, "ratio": ratio, **variant}) in done:
                continue
            rcfg = RecoverConfig(  # alpha = 2 x rank: the LoRA scale stays 2 at any rank, as at r16 / alpha 32
                data=[c4, alpaca] if ours else alpaca, tokens=args.recover_tokens, batch_size=8, seq_len=512,
                lr=args.lr, rank=variant["rank"], alpha=2.0 * variant["rank"], kd_weight=variant["kd_weight"],
                warmup=10,
            )  # fmt: skip
            if variant["interleave"]:
                merged, head, pruned, rep, prune_s, recover_s = interleaved(
                    base.model, tok, calib, ratio, variant, rcfg, p0, shared, args
                )
            else:
                model, head, pruned, prune_s = pruned_once(
                    base.model, tok, calib, method, ratio, variant, p0, shared, args
                )
                if args.pruned_only:
                    ppl = pruned["wikitext2_ppl"]
                    save({**head, "pruned": {"wikitext2_ppl": ppl}, "prune_seconds": round(prune_s, 1)})
                    continue
                t1 = time.time()
                res = recover(model, tok, rcfg, teacher=base.model if ours else None)
                rep = res.report
                merged, _ = merge(res.model, calib[:1, :128])
                recover_s = time.time() - t1
            save(
                {
                    **head,
                    "pruned": pruned,
                    "recovered": evaluate(merged, tok, shared, args),
                    "recovery_tokens": rep["tokens"],
                    "recovery_data": rep["data"],
                    "bf16_autocast": rep["bf16_autocast"],  # auto: only where the CPU/GPU computes bf16 natively
                    "calibration": calib_fp,
                    "prune_seconds": round(prune_s, 1),
                    "recover_seconds": round(recover_s, 1),
                }
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
