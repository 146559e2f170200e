"""Recovery losses computed from final hidden states, a slice of tokens at a time.

Why: with a real vocabulary the logits dominate memory. SmolLM2 (49,152 tokens) at 8 x 512 tokens holds
0.8 GB per fp32 logits tensor; the LM loss, the student's and the teacher's log-softmax, the KL and their
gradients kept about ten of them alive (17 GB peak). Here, when a batch's logits exceed RECOMPUTE_ABOVE, the
LM head runs on `chunk` tokens at a time inside activation checkpointing, so only one slice of logits exists
at once (forward and backward); smaller batches run it once, as fast as a plain loop. Both equal the full
computation (tests/test_recover_losses.py).

lm_kd_loss is a pure tensor function (hidden states and head weights in, a scalar out); step_loss runs the
student (and teacher) decoder on one batch and calls it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from slimdeploy.errors import SlimdeployError
from slimdeploy.recover.config import RecoverConfig

IGNORE = -100
LOGITS_BUDGET = 1 << 25  # fp32 elements of one logits slice (128 MB): sets the chunk from the vocabulary
# Up to this many fp32 logits per batch (student + teacher; 1 GB) the head runs once, kept for backward, as a
# plain training loop does; above it, a slice at a time with recompute (costs ~10% of a step on SmolLM2).
RECOMPUTE_ABOVE = 1 << 28


def chunk_tokens(vocab: int) -> int:
    return max(16, LOGITS_BUDGET // max(1, vocab))


def shifted_labels(ids: torch.Tensor) -> torch.Tensor:
    """Next-token labels aligned with every position; the last position of each row predicts nothing."""
    labels = torch.full_like(ids, IGNORE)
    labels[:, :-1] = ids[:, 1:]
    return labels


def _slice_sums(h, labels, th, weight, bias, t_weight, t_bias, T: float, t_vals=None, t_idx=None):
    logits = F.linear(h, weight, bias).float()
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    if t_vals is not None:  # the teacher's cached top-k logits: KL over its top k, renormalised
        s = F.log_softmax(logits / T, dim=-1).gather(-1, t_idx)
        t = F.log_softmax(t_vals.float() / T, dim=-1)
        return ce, (t.exp() * (t - s)).sum()
    if th is None:
        return ce, ce.new_zeros(())
    s = F.log_softmax(logits / T, dim=-1)
    t = F.log_softmax(F.linear(th, t_weight, t_bias).float() / T, dim=-1)
    kl = (t.exp() * (t - s)).sum()
    return ce, kl


def lm_kd_loss(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    ids: torch.Tensor,
    kd_weight: float = 0.0,
    temperature: float = 1.0,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: torch.nn.Linear | None = None,
    chunk: int | None = None,
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(1 - w) * next-token CE (mean over predicted tokens) + w * T^2 * KL(teacher || student) (mean over
    all tokens), with hidden (B, S, H) from the student's decoder and ids (B, S) the packed input. The
    teacher comes as its hidden states and head, or as cached top-k (values, indices), each (B * S, k)."""
    topk = teacher_topk is not None and kd_weight > 0
    use_kd = (teacher_hidden is not None or topk) and kd_weight > 0
    labels = shifted_labels(ids).flatten()
    h = hidden.flatten(0, 1)
    full = use_kd and not topk
    th = teacher_hidden.flatten(0, 1).detach().to(h.device) if full else None
    n_logits = h.shape[0] * head.weight.shape[0] * (2 if full else 1)
    whole = chunk is None and n_logits <= RECOMPUTE_ABOVE
    chunk = h.shape[0] if whole else chunk or chunk_tokens(head.weight.shape[0])
    # the teacher may sit on another device: its head (vocab x hidden, not the whole model) comes over
    t_w = teacher_head.weight.detach().to(h.device) if full else None
    t_b = teacher_head.bias.detach().to(h.device) if full and teacher_head.bias is not None else None
    tv, ti = (teacher_topk[0].to(h.device), teacher_topk[1].to(h.device)) if topk else (None, None)
    ce_sum = kl_sum = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk):
        args = (h[i : i + chunk], labels[i : i + chunk], th[i : i + chunk] if full else None)
        cached = (tv[i : i + chunk], ti[i : i + chunk]) if topk else (None, None)
        if whole:
            ce, kl = _slice_sums(*args, head.weight, head.bias, t_w, t_b, temperature, *cached)
        else:  # recompute this slice's logits in backward instead of keeping them: memory is one slice
            ce, kl = checkpoint(
                _slice_sums, *args, head.weight, head.bias, t_w, t_b, temperature, *cached, use_reentrant=False
            )
        ce_sum, kl_sum = ce_sum + ce, kl_sum + kl
    n_lm = (labels != IGNORE).sum().clamp(min=1)
    lm = ce_sum / n_lm
    if not use_kd:
        return lm
    return (1 - kd_weight) * lm + kd_weight * (temperature**2) * kl_sum / h.shape[0]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(teacher || student), averaged over tokens (full logits: the reference for lm_kd_loss)."""
    s = F.log_softmax(student_logits.float() / T, dim=-1)
    t = F.log_softmax(teacher_logits.float() / T, dim=-1)
    return (T * T) * F.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True, reduction="batchmean")


def decoder_and_head(model):
    """(decoder, lm_head) when logits are exactly lm_head(decoder(x)) (no soft-capping or scaling), else None."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = causal.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    head, decoder = causal.get_output_embeddings(), getattr(causal, "model", None)
    if not isinstance(head, torch.nn.Linear) or decoder is None:
        return None
    return decoder, head


def step_loss(
    model, x: torch.Tensor, cfg: RecoverConfig, teacher=None, chunked: bool = True, teacher_topk=None
) -> torch.Tensor:
    x = x.to(next(model.parameters()).device)  # batches are built on the CPU; the model may sit elsewhere
    if teacher_topk is not None and cfg.kd_weight > 0:  # the teacher's cached top-k logits (teacher_cache.py)
        parts = decoder_and_head(model)
        if parts is None:
            raise SlimdeployError("teacher_topk needs logits = lm_head(decoder(x)); use teacher_topk 0")
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            hidden = parts[0](input_ids=x, use_cache=False).last_hidden_state
            return lm_kd_loss(hidden, parts[1], x, cfg.kd_weight, cfg.kd_temperature, teacher_topk=teacher_topk)
    use_kd = teacher is not None and cfg.kd_weight > 0
    parts = decoder_and_head(model) if chunked else None
    t_parts = decoder_and_head(teacher) if use_kd and parts else None
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        if parts and (t_parts or not use_kd):  # logits a slice at a time (recover/losses.py)
            hidden = parts[0](input_ids=x, use_cache=False).last_hidden_state
            t_hidden = None
            if use_kd:
                with torch.no_grad():
                    t_hidden = t_parts[0](input_ids=x.to(teacher.device), use_cache=False).last_hidden_state
            return lm_kd_loss(
                hidden, parts[1], x, cfg.kd_weight, cfg.kd_temperature, t_hidden, t_parts[1] if t_parts else None
            )
        out = model(input_ids=x, labels=x, use_cache=False)
        loss = out.loss
        if use_kd:
            with torch.no_grad():
                t_logits = teacher(input_ids=x.to(teacher.device), use_cache=False).logits.to(x.device)
            loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd_loss(out.logits, t_logits, cfg.kd_temperature)
    return loss
