"""Train the embedded default model `slimdeploy-demo` from scratch on the stdlib corpus.

Reproducible (fixed seeds, data order a pure function of the step), resumable (atomic checkpoints every
`ckpt_every` steps), and small enough for two CPU cores: a Llama with head_dim 64 and GQA 6:2 so that every
backend (vLLM's CPU attention needs head_dim >= 32, ONNX, transformers) can serve it, and 384 hidden units
so that query-head counts 2, 3, 4 and 6 all divide hidden_size (transformers 5.x insists on it).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from slimdeploy.zoo import corpus

EOT = "<|endoftext|>"


@dataclass
class DemoTrainConfig:
    vocab_size: int = 8192
    hidden_size: int = 384
    intermediate_size: int = 1024
    num_layers: int = 6
    num_heads: int = 6
    num_kv_heads: int = 2
    head_dim: int = 64
    seq_len: int = 512
    batch_size: int = 8
    steps: int = 1300
    lr: float = 1.5e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 1234
    ckpt_every: int = 100
    eval_every: int = 400
    threads: int = 0  # 0: torch default


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style), so any text round-trips; wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, model_max_length=4096
    )


def pack(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Documents joined by the end-of-text token, cut into (n, seq_len) blocks: no padding at all."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eot)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def build_model(cfg: DemoTrainConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    eot = tokenizer.convert_tokens_to_ids(EOT)
    config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.seq_len * 2,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def lr_at(step: int, cfg: DemoTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def batch_indices(step: int, n_blocks: int, cfg: DemoTrainConfig) -> torch.Tensor:
    """Epoch-wise permutations seeded by (seed, epoch): the batch of a step never depends on history."""
    per_epoch = n_blocks // cfg.batch_size
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    perm = torch.randperm(n_blocks, generator=g)
    return perm[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]


@torch.no_grad()
def heldout_loss(model, blocks: torch.Tensor, max_blocks: int = 64) -> float:
    model.eval()
    losses = []
    for i in range(0, min(len(blocks), max_blocks), 8):
        x = blocks[i : i + 8]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(model(input_ids=x, labels=x).loss.float().item())
    model.train()
    return sum(losses) / len(losses)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_demo(work_dir: Path, out_dir: Path, cfg: DemoTrainConfig | None = None, progress=None) -> dict:
    """Train (or resume) the demo model in `work_dir`; write the shippable bf16 model to `out_dir`."""
    cfg = cfg or DemoTrainConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = work_dir / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        tokenizer = train_tokenizer(corpus.read_split("train"), cfg.vocab_size)
        tokenizer.save_pretrained(tok_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    data_path = work_dir / "blocks.pt"
    if not data_path.exists():
        _save_atomic(
            {
                "train": pack(tokenizer, corpus.read_split("train"), cfg.seq_len),
                "eval": pack(tokenizer, corpus.read_split("eval"), cfg.seq_len),
            },
            data_path,
        )
    blocks = torch.load(data_path, weights_only=True)
    model = build_model(cfg, tokenizer)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    ckpt_path = work_dir / "checkpoint.pt"
    start, history = 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        start, history = state["step"], state["history"]
    model.train()
    tokens_per_step = cfg.batch_size * cfg.seq_len
    t0 = time.time()
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x = blocks["train"][batch_indices(step, len(blocks["train"]), cfg)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rate = (step + 1 - start) * tokens_per_step / (time.time() - t0)
        if progress:
            progress(step + 1, cfg.steps, loss.item(), rate)
        entry = {"step": step + 1, "loss": round(loss.item(), 4), "tok_s": round(rate)}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            entry["heldout_loss"] = round(heldout_loss(model, blocks["eval"]), 4)
        history.append(entry)
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            _save_atomic(
                {"model": model.state_dict(), "optim": opt.state_dict(), "step": step + 1, "history": history},
                ckpt_path,
            )
    summary = {
        "config": asdict(cfg),
        "tokens_seen": cfg.steps * tokens_per_step,
        "train_blocks": len(blocks["train"]),
        "final_heldout_loss": history[-1].get("heldout_loss"),
        "corpus": corpus.fingerprint(),
        "history": history,
    }
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
