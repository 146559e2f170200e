"""Distillation without the teacher in memory: its top-k logits for every recovery batch, computed once.

Recovery batches are a pure function of the step (recover/data.py), so before training the teacher runs over
all of them, keeps each token's k largest logits and their vocabulary indices (fp32 + int32: 8 bytes x k per
token; k = 64 is 512 bytes), and writes one file per micro-batch into the work folder; then it can be freed.
The KD term becomes KL(teacher restricted to its top k || student) (losses.py), equal to the full KL when
k is the vocabulary. Files already there are kept, so an interrupted run does not recompute them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from slimdeploy.errors import SlimdeployError
from slimdeploy.recover.config import RecoverConfig
from slimdeploy.recover.losses import chunk_tokens, decoder_and_head


def topk_file(folder: Path, step: int, micro: int, rank: int = 0) -> Path:
    return Path(folder) / f"r{rank}-s{step:06d}-m{micro:03d}.pt"


@torch.no_grad()
def teacher_topk(teacher, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices), each (B * S, k): the teacher's k largest logits per token, a slice at a time."""
    parts = decoder_and_head(teacher)
    if parts is None:
        raise SlimdeployError("teacher_topk needs logits = lm_head(decoder(x)) (no soft-capping); use teacher_topk 0")
    decoder, head = parts
    if k > head.weight.shape[0]:
        raise SlimdeployError(f"teacher_topk {k} exceeds the vocabulary of {head.weight.shape[0]}")
    h = decoder(input_ids=x.to(head.weight.device), use_cache=False).last_hidden_state.flatten(0, 1)
    vals, idx = [], []
    for i in range(0, h.shape[0], chunk_tokens(head.weight.shape[0])):
        v, j = F.linear(h[i : i + chunk_tokens(head.weight.shape[0])], head.weight, head.bias).float().topk(k, dim=-1)
        vals.append(v.cpu())
        idx.append(j.to(torch.int32).cpu())
    return torch.cat(vals), torch.cat(idx)


def cache_teacher_topk(teacher, batches, k: int, folder: Path, rank: int = 0, progress=None) -> dict:
    """Write the top-k file of every (step, micro, x) in `batches` that is not there yet."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = list(batches)
    written = 0
    for n, (step, micro, x) in enumerate(items):
        path = topk_file(folder, step, micro, rank)
        if not path.exists():
            values, indices = teacher_topk(teacher, x, k)
            tmp = path.with_suffix(".tmp")
            torch.save({"values": values, "indices": indices}, tmp)
            os.replace(tmp, path)  # whole files only: a killed run leaves no half-written cache entry
            written += 1
        if progress:
            progress(n + 1, len(items))
    total = sum(f.stat().st_size for f in folder.glob(f"r{rank}-*.pt"))
    return {"mode": "topk", "k": k, "files": len(items), "written": written, "bytes": total}


def load_topk(folder: Path, step: int, micro: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    path = topk_file(folder, step, micro, rank)
    if not path.exists():
        raise SlimdeployError(f"teacher cache entry {path} is missing; delete {folder} and run again")
    d = torch.load(path, weights_only=True)
    return d["values"], d["indices"].long()


def recovery_batches(mix, cfg: RecoverConfig, rank: int = 0, world: int = 1):
    """(step, micro, this rank's rows) of every micro-batch of the run, as recover() will draw them."""
    for step in range(cfg.total_steps):
        for micro in range(cfg.grad_accum):
            yield step, micro, mix.batch(step, micro, cfg)[rank::world]
