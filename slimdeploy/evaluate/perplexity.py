"""Sliding-window perplexity with an explicit, recorded protocol.

Protocol: the documents form one token stream: with boundary "bos" every document starts with BOS (how
llama-style models are trained), with "eos" documents are joined by EOS, with "none" simply concatenated.
Text files are one document unless doc_split is "blank-line" (paragraphs become documents). Windows of
`context_length` tokens start every `stride` tokens; each target token is scored exactly once, in the first
window that contains it with at least one token of context: windows start every `stride` tokens, but never
later than one token before the previous window's end (so stride == context still scores every token).
The first token is never scored.

`chunked` protocols (the papers' WikiText-2 numbers: SparseGPT, SliceGPT, LLM-Pruner) instead cut the stream
into non-overlapping windows of `context_length`, drop the incomplete tail, and score every token of a
window but its first: no token gets more context than its window gives it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from slimdeploy.errors import SlimdeployError


@dataclass(frozen=True)
class PerplexityProtocol:
    context_length: int = 512
    stride: int = 256
    boundary: str = "bos"  # bos | eos | none
    doc_split: str = "none"  # none | blank-line (text files only: paragraphs become documents)
    chunked: bool = False  # non-overlapping windows, tail dropped, first token of each window unscored
    name: str = "sliding"  # which named protocol produced these settings

    def check(self, n_tokens: int) -> None:
        if self.boundary not in ("bos", "eos", "none") or self.doc_split not in ("blank-line", "none"):
            raise SlimdeployError("boundary must be bos|eos|none and doc_split blank-line|none")
        if self.context_length < 2 or not 1 <= self.stride <= self.context_length:
            raise SlimdeployError(
                f"need context_length >= 2 and 1 <= stride <= context_length (got {self.context_length}, {self.stride})"
            )
        if n_tokens < self.context_length:
            raise SlimdeployError(
                f"text too short: {n_tokens} tokens, fewer than one window of {self.context_length}; "
                "pass more text or a smaller --context-length"
            )


def windows(n_tokens: int, context: int, stride: int, chunked: bool = False) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) per window; targets first_target..end-1 are scored in that window."""
    if chunked:
        return [(i * context, (i + 1) * context, i * context + 1) for i in range(n_tokens // context)]
    out, prev_end, begin = [], 1, 0
    while prev_end < n_tokens:
        end = min(begin + context, n_tokens)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        begin = min(begin + stride, end - 1)  # the next target needs at least one token of context
    return out


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-position NLL of input_ids[:, 1:] given logits[:, :-1], computed in fp32: (batch, seq-1)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


# vocabulary logits held at once while scoring: 2^25 floats (128 MB in fp32). A whole batch of 2,048-token
# windows of a 49k vocabulary would be 3.2 GB, then the same again for log_softmax (14 GB peak seen).
LOGIT_BUDGET = 2**25


def _plain_head(model) -> bool:
    """Logits are the output embedding of the decoder's last hidden state, nothing else (no softcap/scale)."""
    cfg = model.config
    has_parts = callable(getattr(model, "get_decoder", None)) and model.get_output_embeddings() is not None
    return has_parts and not getattr(cfg, "final_logit_softcapping", None) and not getattr(cfg, "logit_scale", None)


def window_nll(model, ids: torch.Tensor, budget: int = LOGIT_BUDGET) -> torch.Tensor:
    """token_nll(model(ids).logits, ids), computed a slice of positions at a time, so that memory stays near
    the model's own size whatever the window and vocabulary (the decoder runs once; only the head is sliced)."""
    if not _plain_head(model):
        return token_nll(model(input_ids=ids).logits, ids)
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state
    head = model.get_output_embeddings()
    step = max(1, budget // (ids.shape[0] * head.weight.shape[0]))
    parts = []
    for s in range(0, ids.shape[1] - 1, step):
        e = min(s + step, ids.shape[1] - 1)
        logits = head(hidden[:, s:e]).float()
        parts.append(-torch.log_softmax(logits, dim=-1).gather(-1, ids[:, s + 1 : e + 1, None]).squeeze(-1))
        del logits
    return torch.cat(parts, dim=1)


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, protocol: PerplexityProtocol, batch_size: int = 8, progress=None) -> dict:
    """Score `stream` (1-D token ids) under `protocol`; returns tokens scored, mean NLL, ppl, wall time."""
    protocol.check(len(stream))
    wins = windows(len(stream), protocol.context_length, protocol.stride, protocol.chunked)
    t0 = time.perf_counter()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    i = 0
    while i < len(wins):
        length = wins[i][1] - wins[i][0]
        group = [w for w in wins[i : i + batch_size] if w[1] - w[0] == length]  # batch equal lengths only
        ids = torch.stack([stream[b:e] for b, e, _ in group]).to(device)
        nll = window_nll(model, ids)
        for row, (b, e, first) in enumerate(group):
            scored = nll[row, first - b - 1 : e - b - 1]
            total += scored.double().sum().item()
            count += scored.numel()
        i += len(group)
        if progress:
            progress(i, len(wins))
    expected = len(wins) * (protocol.context_length - 1) if protocol.chunked else len(stream) - 1
    if count != expected:
        raise AssertionError(f"scored {count} tokens, expected {expected}")
    mean = total / count
    return {
        "tokens_scored": count,
        "nll": mean,
        "ppl": math.exp(mean),
        "wall_s": round(time.perf_counter() - t0, 3),
        "protocol": asdict(protocol),
    }
