"""LoRA recovery: a short, readable loop (nanoGPT-sized) over packed blocks.

Loss = (1 - kd_weight) * LM loss + kd_weight * T^2 * KL(teacher || student) at temperature T, the teacher
being the unpruned model (Minitron-style distillation). Checkpoints (adapter weights, optimizer, step) are
written atomically every `ckpt_every` steps; batches are a pure function of the step, so a resumed run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slimdeploy.errors import SlimdeployError
from slimdeploy.prune.plan import PrunePlan
from slimdeploy.recover.config import RecoverConfig
from slimdeploy.recover.data import DataMixture, pack_blocks, recovery_docs
from slimdeploy.recover.losses import step_loss
from slimdeploy.recover.teacher_cache import load_topk
from slimdeploy.utils.device import resolve_bf16
from slimdeploy.utils.distributed import average, barrier, data_parallel, gather, world
from slimdeploy.utils.memory import peak_rss_mb


def attach_lora(model, cfg: RecoverConfig):
    """Wrap `model` with PEFT LoRA adapters; refuses targets that match no module."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.targets if t not in names]
    if missing or not cfg.targets:
        raise SlimdeployError(
            f"LoRA targets {missing or cfg.targets} match no module of this model; "
            f"available projections include {', '.join(sorted(n for n in names if 'proj' in n))}"
        )
    torch.manual_seed(cfg.seed)
    lcfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lcfg)
    if cfg.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    return peft_model


def _controller(model, cfg: RecoverConfig, total: int):
    """The pruning-while-training controller of the mode (None for oneshot). Resume: oneshot only."""
    if cfg.mode == "oneshot":
        return None
    from slimdeploy.analyze.adapters import family_of
    from slimdeploy.recover.progressive import LoRAPruneIterative, LoRAShearProgressive

    family_of(model)
    if cfg.mode == "loraprune":
        return LoRAPruneIterative(model, cfg.prune, total, cfg.update_every, cfg.prune_fraction)
    return LoRAShearProgressive(model, cfg.prune, total, cfg.periods, cfg.prune_fraction)


def lr_at(step: int, cfg: RecoverConfig) -> float:
    total = cfg.total_steps
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    if cfg.schedule == "linear":
        return cfg.lr * (1 - progress)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def _trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _save_ckpt(path: Path, model, opt, step: int, history: list) -> None:
    state = {
        "adapter": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optim": opt.state_dict(),
        "step": step,
        "history": history,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_ckpt(path: Path, model, opt) -> tuple[int, list]:
    state = torch.load(path, weights_only=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state["adapter"].items():
            params[n].copy_(t)
    opt.load_state_dict(state["optim"])
    return state["step"], state["history"]


@torch.no_grad()
def heldout_loss(model, blocks: torch.Tensor, cfg: RecoverConfig, max_blocks: int = 16) -> float:
    was = model.training
    model.eval()
    losses = [step_loss(model, blocks[i : i + 4], cfg).item() for i in range(0, min(len(blocks), max_blocks), 4)]
    model.train(was)
    return sum(losses) / max(1, len(losses))


class _StepLoss(torch.nn.Module):
    """One micro-batch's loss as a module's forward, so DDP can wrap it (the loss runs the decoder and the
    LM head separately, recover/losses.py, not the model's own forward). The teacher is not registered:
    DDP never touches it."""

    def __init__(self, model, cfg: RecoverConfig, teacher=None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.__dict__["teacher"] = teacher

    def forward(self, x: torch.Tensor, teacher_topk=None) -> torch.Tensor:
        return step_loss(self.model, x, self.cfg, self.__dict__["teacher"], teacher_topk=teacher_topk)


@dataclass
class RecoverResult:
    model: Any  # the PEFT model: adapters not merged yet
    report: dict[str, Any]
    pending_plan: PrunePlan | None = None  # loraprune/lorashear: zeroed groups still to slice away


def recover(
    model,
    tokenizer,
    cfg: RecoverConfig,
    teacher=None,
    work_dir: Path | None = None,
    progress=None,
    on_step=None,
    teacher_topk_dir: Path | None = None,
) -> RecoverResult:
    """Train LoRA adapters on `model`. Resumes from `work_dir` if it has a checkpoint. The distillation
    teacher is a model (`teacher`) or its cached top-k logits (`teacher_topk_dir`, teacher_cache.py)."""
    from slimdeploy.load.model import require_tokenizer

    require_tokenizer(tokenizer, "recover stage")
    rank, n_ranks = world()
    if n_ranks > 1 and cfg.batch_size % n_ranks:
        raise SlimdeployError(
            f"recover.batch_size {cfg.batch_size} is not divisible by the world size {n_ranks}: each rank takes "
            f"an equal share of every batch; use a multiple of {n_ranks}"
        )
    if n_ranks > 1 and cfg.mode != "oneshot":
        raise SlimdeployError(f"distributed recovery runs mode oneshot, not {cfg.mode}; launch one process")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and cfg.seq_len > max_pos:
        raise SlimdeployError(f"recover seq_len {cfg.seq_len} exceeds the model's context of {max_pos} tokens")
    # bf16 autocast only where the device computes it natively ('auto'); the losses read a plain bool
    cfg = cfg.model_copy(update={"bf16": resolve_bf16(cfg.bf16, str(next(model.parameters()).device))})
    mix = DataMixture.build(tokenizer, cfg)
    fp = mix.fingerprints if len(mix.sources) > 1 else mix.fingerprints[0]
    held = None
    if cfg.eval_every:
        source = cfg.data if isinstance(cfg.data, str) or cfg.data is None else cfg.data[0]
        held_docs, _ = recovery_docs(
            source, cfg.prompt_template, split="eval", tokenizer=tokenizer, chat_template=cfg.chat_template
        )
        held = pack_blocks(tokenizer, held_docs, cfg.seq_len)[-16:]
    total = cfg.total_steps
    ctl = _controller(model, cfg, total)
    if ctl and len(mix.sources) > 1:
        mix.measure_dense(model, cfg)
    peft_model = attach_lora(model, cfg)
    peft_model.train()
    opt = torch.optim.AdamW(_trainable(peft_model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, []
    ckpt = Path(work_dir) / "recover_ckpt.pt" if work_dir and cfg.mode == "oneshot" else None
    if ckpt and ckpt.exists():
        start, history = _load_ckpt(ckpt, peft_model, opt)
    if ctl:
        ctl.attach(peft_model)
    # under torchrun, PyTorch DDP averages the LoRA gradients over the ranks (frozen base replicated)
    loss_fn = data_parallel(_StepLoss(peft_model, cfg, teacher)) if n_ranks > 1 else _StepLoss(peft_model, cfg, teacher)
    t0, tokens = time.perf_counter(), 0
    for step in range(start, total):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            x = mix.batch(step, micro, cfg)[rank::n_ranks]  # this rank's rows of the global batch
            cached = load_topk(teacher_topk_dir, step, micro, rank) if teacher_topk_dir else None
            last = micro == cfg.grad_accum - 1  # DDP all-reduces once per step, at the last micro-batch
            with nullcontext() if last or n_ranks == 1 else loss_fn.no_sync():
                loss = loss_fn(x, cached) / cfg.grad_accum
                loss.backward()
            loss_sum += loss.item()
            tokens += x.numel()
        loss_sum = average(loss_sum)  # the mean over ranks of equal-sized shares: the global batch's loss
        if not math.isfinite(loss_sum):
            raise SlimdeployError(f"recovery diverged at step {step + 1} (loss {loss_sum}); lower lr")
        torch.nn.utils.clip_grad_norm_(_trainable(peft_model), 1.0)
        if ctl:
            ctl.after_backward(peft_model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ctl and ctl.after_step(peft_model, step + 1) == "merge":  # LoRAShear: fold in, start fresh adapters
            ctl.masks.remove()
            peft_model = attach_lora(peft_model.merge_and_unload(), cfg)
            peft_model.train()
            ctl.attach(peft_model)
            opt = torch.optim.AdamW(_trainable(peft_model), lr=cfg.lr, weight_decay=cfg.weight_decay)
            if len(mix.sources) > 1:  # LoRAShear's dynamic data adaptor
                ctl.history[-1]["data_weights"] = mix.adapt(peft_model, cfg)
        entry = {"step": step + 1, "loss": round(loss_sum, 5)}
        if held is not None and (step + 1) % cfg.eval_every == 0:
            entry["heldout_loss"] = round(heldout_loss(peft_model, held, cfg), 5)
        history.append(entry)
        rate = tokens / max(1e-9, time.perf_counter() - t0)
        if progress:
            progress(step + 1, total, loss=loss_sum, tok_s=rate)
        if on_step:
            on_step(peft_model, step + 1)
        if ckpt and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == total):
            if rank == 0:  # every rank holds the same adapter and optimizer state
                _save_ckpt(ckpt, peft_model, opt, step + 1, history)
            barrier()
    peft_model.eval()
    pending = ctl.finish(peft_model) if ctl else None
    seconds = time.perf_counter() - t0
    report = {
        "steps": total,
        "tokens": total * cfg.tokens_per_step,
        "data": fp,
        "blocks": sum(len(b) for b in mix.blocks),
        "data_weights": [round(w, 4) for w in mix.weights.tolist()],
        "final_loss": history[-1]["loss"] if history else None,
        "history": history,
        "kd_weight": cfg.kd_weight,
        "bf16_autocast": cfg.bf16,
        "seconds": round(seconds, 1),
        "mode": cfg.mode,
        "world_size": n_ranks,
        "tokens_per_rank": tokens,  # trained in this run (after a resume: since the resume)
        "tokens_per_s": round(tokens * n_ranks / max(seconds, 1e-9), 1),  # all ranks together
        "peak_rss_mb_per_rank": [round(x, 1) for x in gather(peak_rss_mb())],
    }
    if ctl:
        report["pruning_schedule"] = ctl.history
    return RecoverResult(peft_model, report, pending)
