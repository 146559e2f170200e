"""Named perplexity protocols, so a number can be set beside a paper's.

- `sliding` (default): our documented sliding-window protocol (see perplexity.py).
- `wikitext2`: SparseGPT / SliceGPT. The WikiText-2 raw test rows joined by "\\n\\n", tokenized once as
  the tokenizer does by default, cut into non-overlapping windows of the model's trained context capped
  at 2048 tokens (stride = window), tail dropped.
- `llm-pruner`: LLM-Pruner's PPLMetric. The same text in 128-token windows.

Rows follow the Hugging Face `wikitext` loader: each line of `wiki.test.raw` is a row, blank lines are
empty rows. A `.txt` path is read that way; `hf:wikitext:wikitext-2-raw-v1:test` gives the same rows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slimdeploy.errors import SlimdeployError
from slimdeploy.evaluate.perplexity import PerplexityProtocol

NAMED = ("sliding", "wikitext2", "llm-pruner")
WIKITEXT_HUB = "hf:wikitext:wikitext-2-raw-v1:test"


def named_protocol(name: str, max_positions: int | None) -> PerplexityProtocol:
    if name == "wikitext2":
        ctx = min(max_positions or 2048, 2048)
        return PerplexityProtocol(ctx, ctx, "none", "none", chunked=True, name=name)
    if name == "llm-pruner":
        return PerplexityProtocol(128, 128, "none", "none", chunked=True, name=name)
    raise SlimdeployError(f"unknown perplexity protocol {name!r}; choose one of {', '.join(NAMED)}")


def wikitext_rows(source: str) -> tuple[list[str], dict]:
    """The rows of a WikiText-style raw file (or hf: dataset), blank rows kept as "" as the hub loader does."""
    if source.startswith("hf:"):
        from slimdeploy.load.data import hf_rows

        return hf_rows(source)
    from slimdeploy.load.data import file_digest

    path = Path(source).expanduser()
    if not path.is_file():
        raise SlimdeployError(f"data file {source} does not exist; pass wiki.test.raw or {WIKITEXT_HUB}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        raise SlimdeployError(f"{source} is not UTF-8 text; pass WikiText-2's wiki.test.raw") from None
    rows = [line if line.strip() else "" for line in lines]
    if not any(rows):
        raise SlimdeployError(f"{source} contains no text")
    fp = {"source": str(path), "sha256": file_digest(path), "rows": len(rows)}
    return rows, fp


def protocol_stream(tokenizer, rows: list[str]) -> torch.Tensor:
    """The papers' tokenization: one call on the joined text, special tokens as the tokenizer adds them."""
    ids = tokenizer("\n\n".join(rows), return_tensors="pt")["input_ids"][0]
    return ids.to(torch.long)
