"""Recovery data: text, JSONL or Alpaca-style instruction JSON -> packed (n, seq_len) blocks, no padding.

Packing (documents joined by the boundary token, cut into full blocks) avoids the left-padding divergence
seen with LoRA on CPU, and makes every batch the same shape.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from slimdeploy.errors import SlimdeployError
from slimdeploy.load.data import load_texts, token_stream


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The model's chat template applied (transformers renders it in a sandbox); a template that fails there,
    one that reaches for the OS or includes files, is refused in one line."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as exc:  # jinja's SecurityError, TemplateError, TypeError from a broken template
        first = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise SlimdeployError(
            f"the model's chat template cannot render a conversation ({first}); repair chat_template in the "
            "model's tokenizer files, or set recover.chat_template: off to use the prompt_template"
        ) from None


def alpaca_docs(path: Path, template: str, tokenizer=None) -> list[str]:
    """Instruction records as training text: the model's own chat template when `tokenizer` has one (a chat
    model stays a chat model), else `template` (Alpaca's prompt format)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SlimdeployError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); "
            "expected a list of {instruction, input, output} records"
        ) from None
    if not isinstance(rows, list) or not rows:
        raise SlimdeployError(f"{path}: expected a non-empty JSON list of instruction records")
    docs = []
    for i, row in enumerate(rows):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("instruction"), str)
            or not isinstance(row.get("output"), str)
        ):
            raise SlimdeployError(f"{path}: record {i} needs string fields 'instruction' and 'output'")
        extra = row.get("input") or ""
        if tokenizer is not None:
            user = row["instruction"] + (f"\n\n{extra}" if extra else "")
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
            docs.append(render_chat(tokenizer, messages))
            continue
        block = f"### Input:\n{extra}\n\n" if extra else ""
        docs.append(template.format(instruction=row["instruction"], input_block=block, output=row["output"]))
    return docs


def recovery_docs(
    source: str | None, template: str, split: str = "train", tokenizer=None, chat_template: str = "auto"
) -> tuple[list[str], dict]:
    if source is not None and source.endswith(".json"):
        path = Path(source)
        if not path.exists():
            raise SlimdeployError(f"recovery data {source} does not exist")
        chat = tokenizer if chat_template == "auto" and getattr(tokenizer, "chat_template", None) else None
        prompt = "chat_template" if chat is not None else "prompt_template"
        return alpaca_docs(path, template, chat), {"source": source, "format": "alpaca", "prompt": prompt}
    texts = load_texts(source, split=split)
    return texts.docs, texts.fingerprint


def pack_blocks(tokenizer, docs: list[str], seq_len: int) -> torch.Tensor:
    stream = token_stream(tokenizer, docs, "bos")
    n = len(stream) // seq_len
    if n < 1:
        raise SlimdeployError(f"recovery data too short: {len(stream)} tokens for one block of {seq_len}")
    return stream[: n * seq_len].view(n, seq_len)


def batch_at(step: int, micro: int, n_blocks: int, batch_size: int, grad_accum: int, seed: int) -> torch.Tensor:
    """Block indices of micro-batch `micro` of optimizer step `step`: a pure function (resumable runs)."""
    per_epoch = max(1, n_blocks // batch_size)
    flat = step * grad_accum + micro
    epoch, pos = divmod(flat, per_epoch)
    perm = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    idx = perm[pos * batch_size : (pos + 1) * batch_size]
    if len(idx) < batch_size:  # fewer blocks than a batch: wrap around
        idx = perm[torch.arange(pos * batch_size, (pos + 1) * batch_size) % n_blocks]
    return idx


class DataMixture:
    """One or more packed sources; with several, each micro-batch draws its source by `weights` (seeded by
    the step, so runs stay reproducible). LoRAShear's dynamic data adaptor re-weights towards the sources
    whose loss degraded most relative to the dense model."""

    def __init__(self, sources: list, blocks: list[torch.Tensor], fingerprints: list[dict]):
        self.sources, self.blocks, self.fingerprints = sources, blocks, fingerprints
        self.weights = torch.full((len(blocks),), 1.0 / len(blocks), dtype=torch.float64)
        self.dense_loss: list[float] | None = None

    @classmethod
    def build(cls, tokenizer, cfg) -> DataMixture:
        sources = cfg.data if isinstance(cfg.data, list) else [cfg.data]
        if not sources:
            raise SlimdeployError("recover.data is an empty list; give at least one source")
        blocks, fps = [], []
        for src in sources:
            docs, fp = recovery_docs(src, cfg.prompt_template, tokenizer=tokenizer, chat_template=cfg.chat_template)
            blocks.append(pack_blocks(tokenizer, docs, cfg.seq_len))
            fps.append(fp)
        return cls(sources, blocks, fps)

    def batch(self, step: int, micro: int, cfg) -> torch.Tensor:
        s = 0
        if len(self.blocks) > 1:
            g = torch.Generator().manual_seed(cfg.seed * 104729 + step * cfg.grad_accum + micro)
            s = int(torch.multinomial(self.weights, 1, generator=g))
        b = self.blocks[s]
        return b[batch_at(step, micro, len(b), cfg.batch_size, cfg.grad_accum, cfg.seed + s)]

    @torch.no_grad()
    def _losses(self, model, cfg) -> list[float]:
        from slimdeploy.recover.losses import step_loss

        was = model.training
        model.eval()
        out = [step_loss(model, b[-min(4, len(b)) :], cfg).item() for b in self.blocks]
        model.train(was)
        return out

    def measure_dense(self, model, cfg) -> None:
        self.dense_loss = self._losses(model, cfg)

    def adapt(self, model, cfg) -> list[float]:
        """Weights proportional to exp(loss now - dense loss): the ratio of perplexities per source."""
        now = self._losses(model, cfg)
        ratio = torch.tensor([math.exp(n - d) for n, d in zip(now, self.dense_loss)], dtype=torch.float64)
        self.weights = ratio / ratio.sum()
        return [round(w, 4) for w in self.weights.tolist()]
