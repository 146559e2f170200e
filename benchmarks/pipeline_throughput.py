"""Our eval and recovery loops against plain loops doing the same work, measured in one run (issue 13).

    python benchmarks/pipeline_throughput.py [--model zoo:smollm2-135m-instruct] [--eval-tokens 16384]
        [--steps 6] [--batch 4] [--seq-len 512] [--repeats 2]

- eval: `slimdeploy.evaluate.perplexity` (non-overlapping 512-token windows, batch 8) against a plain
  transformers loop over the same windows (`model(ids).logits` + cross-entropy), same dtype.
- recovery: `slimdeploy.recover.train.recover` (LoRA r16 on all linears, bf16 autocast, AdamW, LM loss)
  against a plain PEFT loop with the same LoraConfig, optimizer, autocast, batches and steps.
- zero-shot (with --task-data): `slimdeploy.evaluate.zeroshot.zero_shot` (lm-eval with the harness's
  overhead, through our sliced-head LM) against a plain loop over the same lm-eval requests (one forward per
  request, log_softmax over the continuation), per task (target: a plain loop's time x 1.5 at most).
Each side runs `--repeats` times, alternating; the medians are compared (target: ours >= 0.9x).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from slimdeploy.evaluate.perplexity import PerplexityProtocol, perplexity
from slimdeploy.load.data import load_texts, token_stream
from slimdeploy.load.model import load_model
from slimdeploy.recover.config import ALL_LINEAR, RecoverConfig
from slimdeploy.recover.train import recover


@torch.no_grad()
def plain_eval(model, stream: torch.Tensor, ctx: int, batch: int) -> float:
    n = len(stream) // ctx
    wins = stream[: n * ctx].view(n, ctx)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        ids = wins[i : i + batch]
        logits = model(input_ids=ids).logits
        F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    return n * (ctx - 1) / (time.perf_counter() - t0)


def ours_eval(model, stream: torch.Tensor, ctx: int, batch: int) -> float:
    r = perplexity(model, stream, PerplexityProtocol(ctx, ctx, chunked=True, name="bench"), batch_size=batch)
    return r["tokens_scored"] / r["wall_s"]


def plain_peft(model, blocks: torch.Tensor, steps: int, batch: int, lr: float) -> float:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=ALL_LINEAR))
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    t0, tokens = time.perf_counter(), 0
    for step in range(steps):
        x = blocks[(step * batch) % len(blocks) :][:batch]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = peft_model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += x.numel()
    return tokens / (time.perf_counter() - t0)


def task_requests(task_name: str, task_data: str, limit: int, seed: int = 0) -> list[tuple[str, str]]:
    """The (context, continuation) pairs lm-eval scores for `limit` seeded documents of a task."""
    import random

    from lm_eval.tasks import get_task_dict

    from slimdeploy.evaluate.zeroshot import _check_file, _lm_eval, _task_config

    _, tm = _lm_eval()
    task = get_task_dict([_task_config(tm, task_name, _check_file(task_name, Path(task_data)))], tm)[task_name]
    n = len(task.eval_docs)
    samples = sorted(random.Random(f"{seed}:{task_name}").sample(range(n), min(limit, n)))
    task.build_all_requests(samples=samples)
    return [inst.args for inst in task.instances]


@torch.no_grad()
def plain_zero_shot(model, tok, requests: list[tuple[str, str]], batch: int = 16) -> float:
    """Seconds for a plain batched loop: requests sorted by length, right-padded batches of `batch`, full
    vocabulary logits, log_softmax, the continuation's log-likelihood per request."""
    t0 = time.perf_counter()
    encoded = []
    for context, continuation in requests:
        ctx = tok(context, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
        cont = tok(continuation, add_special_tokens=False)["input_ids"]
        encoded.append((ctx, cont))
    encoded.sort(key=lambda x: -(len(x[0]) + len(x[1])))
    for i in range(0, len(encoded), batch):
        chunk = encoded[i : i + batch]
        width = max(len(c) + len(k) - 1 for c, k in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (c, k) in enumerate(chunk):
            ids[row, : len(c) + len(k) - 1] = torch.tensor((c + k)[:-1])
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
        for row, (c, k) in enumerate(chunk):
            span = logp[row, len(c) - 1 : len(c) - 1 + len(k)]
            span.gather(-1, torch.tensor(k)[:, None]).sum()
    return time.perf_counter() - t0


def ours_zero_shot(model, tok, task_name: str, task_data: str, limit: int) -> float:
    from slimdeploy.evaluate.zeroshot import zero_shot

    t0 = time.perf_counter()
    zero_shot(model, tok, [task_name], Path(task_data), limit)
    return time.perf_counter() - t0


def zero_shot_rows(model, tok, tasks: list[str], task_data: str, limit: int, repeats: int) -> dict:
    rows = {}
    for name in tasks:
        requests = task_requests(name, task_data, limit)
        ours, plain = [], []
        for _ in range(repeats):
            ours.append(ours_zero_shot(model, tok, name, task_data, limit))
            plain.append(plain_zero_shot(model, tok, requests))
        rows[name] = {
            "requests": len(requests),
            "ours_s": [round(x, 2) for x in ours],
            "plain_s": [round(x, 2) for x in plain],
            "time_ratio": round(statistics.median(ours) / statistics.median(plain), 3),
        }
        print(name, rows[name], flush=True)
    return rows


def ours_recover(model, tok, data: str, steps: int, batch: int, seq_len: int, lr: float) -> float:
    cfg = RecoverConfig(data=data, steps=steps, batch_size=batch, seq_len=seq_len, lr=lr, rank=16, warmup=0, bf16=True)
    rep = recover(model, tok, cfg).report
    return rep["tokens"] / rep["seconds"]


def host_isa() -> dict:
    """Which CPU measured these numbers (AVX2-only hosts emulate bf16; AMX hosts compute it)."""
    import platform

    cpu = torch.backends.cpu.get_cpu_capability()
    return {"cpu_capability": cpu, "machine": platform.machine(), "processor": platform.processor() or None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="zoo:smollm2-135m-instruct")
    ap.add_argument("--data", default=None, help="text for both loops (default: the demo corpus)")
    ap.add_argument("--eval-tokens", type=int, default=16_384)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="fp32", help="eval weights dtype (recovery: fp32 weights + bf16 autocast)")
    ap.add_argument("--task-data", default=None, help="folder of <task>.jsonl: also time zero-shot per task")
    ap.add_argument("--tasks", default="arc_easy,piqa,boolq")
    ap.add_argument("--limit", type=int, default=100, help="zero-shot documents per task")
    ap.add_argument("--zero-shot-only", action="store_true", help="skip the eval and recovery rows")
    ap.add_argument("--out", default="benchmarks/results/pipeline_throughput.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = load_model(args.model, args.dtype)
    tok = base.tokenizer
    zs = None
    if args.task_data:
        zs = zero_shot_rows(base.model, tok, args.tasks.split(","), args.task_data, args.limit, args.repeats)
    if args.zero_shot_only:
        if zs is None:
            ap.error("--zero-shot-only needs --task-data")
        result = {"model": args.model, "settings": vars(args), "zero_shot": zs, "host": host_isa()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        return 0
    stream = token_stream(tok, load_texts(args.data, split="eval").docs)[: args.eval_tokens]
    ev = {"ours": [], "plain": []}
    for _ in range(args.repeats):
        ev["ours"].append(ours_eval(base.model, stream, args.seq_len, 8))
        ev["plain"].append(plain_eval(base.model, stream, args.seq_len, 8))
    data_file = Path(".cache/throughput_text.txt")
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.write_text("\n\n".join(load_texts(args.data, split="train").docs[:400]))
    blocks = token_stream(tok, [data_file.read_text()])
    n = len(blocks) // args.seq_len
    blocks = blocks[: n * args.seq_len].view(n, args.seq_len)
    fp32 = load_model(args.model, "fp32").model
    rec = {"ours": [], "plain": []}
    for _ in range(args.repeats):
        rec["ours"].append(
            ours_recover(copy.deepcopy(fp32), tok, str(data_file), args.steps, args.batch, args.seq_len, 1e-4)
        )
        rec["plain"].append(plain_peft(copy.deepcopy(fp32), blocks, args.steps, args.batch, 1e-4))
    result = {
        "model": args.model,
        "settings": vars(args),
        "eval_tok_s": {k: [round(v, 1) for v in vs] for k, vs in ev.items()},
        "recover_tok_s": {k: [round(v, 1) for v in vs] for k, vs in rec.items()},
        "eval_ratio": statistics.median(ev["ours"]) / statistics.median(ev["plain"]),
        "recover_ratio": statistics.median(rec["ours"]) / statistics.median(rec["plain"]),
        "zero_shot": zs,
        "host": host_isa(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
