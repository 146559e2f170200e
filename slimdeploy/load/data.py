"""Text sources -> documents -> token streams and calibration batches, each with a fingerprint.

A source is one of: None (the demo corpus, a named split), a text file (.txt, .tokens, .md: one document),
a JSONL file (one document per line, `text` field), or `hf:NAME[:CONFIG]:SPLIT` (Hugging Face datasets,
when installed and cached).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slimdeploy.errors import SlimdeployError

TEXT_SUFFIXES = (".txt", ".tokens", ".md", ".py", ".raw")


@dataclass
class TextSource:
    docs: list[str]
    fingerprint: dict = field(default_factory=dict)
    kind: str = "text"  # text | jsonl | demo | hf: only plain text files are cut at blank lines


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_jsonl(path: Path, key: str = "text") -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SlimdeployError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg}); one JSON object per line"
                ) from None
            if not isinstance(row, dict) or not isinstance(row.get(key), str):
                raise SlimdeployError(f'{path}:{lineno}: no string field {key!r}; each line needs {{"{key}": ...}}')
            docs.append(row[key])
    return docs


def load_texts(source: str | None, split: str = "eval") -> TextSource:
    """Documents of a source; `split` only applies to the demo corpus (train | calibration | eval)."""
    if source is None:
        from slimdeploy.zoo import corpus

        docs = corpus.read_split(split)
        fp = corpus.fingerprint()
        return TextSource(docs, {**fp, "split": split}, kind="demo")
    if source.startswith("hf:"):
        return _load_hf(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise SlimdeployError(f"data file {source} does not exist; pass a .txt, .jsonl file or hf:NAME:SPLIT")
    if path.is_dir():
        raise SlimdeployError(f"data path {source} is a directory; pass a .txt or .jsonl file")
    if not path.is_file():
        raise SlimdeployError(f"data path {source} is not a regular file; pass a .txt or .jsonl file")
    if path.suffix == "":  # a system file (/etc/...) or a typo: text is named for what it is
        raise SlimdeployError(f"data file {source} has no suffix; name text .txt (or .jsonl, one document a line)")
    if path.suffix == ".jsonl":
        docs = read_jsonl(path)
    elif path.suffix in TEXT_SUFFIXES:
        try:
            docs = [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError:
            raise SlimdeployError(f"{source} is not UTF-8 text; pass a UTF-8 .txt or .jsonl file") from None
    else:
        raise SlimdeployError(f"unsupported data file type {path.suffix!r} ({source}); use .txt or .jsonl")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise SlimdeployError(f"{source} contains no text")
    fp = {"source": str(path), "sha256": file_digest(path), "bytes": path.stat().st_size, "documents": len(docs)}
    return TextSource(docs, fp, kind="jsonl" if path.suffix == ".jsonl" else "text")


def _hf_dataset(source: str):
    parts = source[3:].split(":")
    if len(parts) not in (2, 3):
        raise SlimdeployError(f"bad dataset spec {source!r}; use hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    try:
        import datasets
    except ImportError:
        raise SlimdeployError("hf: data sources need the `datasets` package: pip install datasets") from None
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        raise SlimdeployError(f"could not load dataset {source}: {str(exc).splitlines()[0]}") from None
    if "text" not in ds.column_names:
        raise SlimdeployError(f"dataset {source} has no `text` column (columns: {', '.join(ds.column_names)})")
    return ds


def hf_rows(source: str) -> tuple[list[str], dict]:
    """Every row of an hf: dataset's text column, blank ones included (named perplexity protocols)."""
    ds = _hf_dataset(source)
    return list(ds["text"]), {"source": source, "rows": len(ds), "fingerprint": ds._fingerprint}


def _load_hf(source: str) -> TextSource:
    ds = _hf_dataset(source)
    docs = [t for t in ds["text"] if t and t.strip()]
    return TextSource(docs, {"source": source, "documents": len(docs), "fingerprint": ds._fingerprint}, kind="hf")


def split_documents(docs: list[str], doc_split: str) -> list[str]:
    """ "blank-line": a text file's paragraphs become documents (TinyStories-style files); "none": as given."""
    if doc_split == "none":
        return docs
    return [p.strip() for d in docs for p in d.split("\n\n") if p.strip()]


def token_stream(tokenizer, docs: list[str], boundary: str = "bos") -> torch.Tensor:
    """Documents tokenized into one stream: "bos" starts each with BOS (EOS between them when the tokenizer
    has no BOS), "eos" joins them with EOS, "none" concatenates them."""
    if boundary == "bos" and tokenizer.bos_token_id is None:
        boundary = "eos"
    ids: list[int] = []
    for i, enc in enumerate(tokenizer(docs, add_special_tokens=False)["input_ids"]):
        if boundary == "bos":
            ids.append(tokenizer.bos_token_id)
        elif boundary == "eos" and i and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        ids.extend(enc)
    return torch.tensor(ids, dtype=torch.long)


def calibration_batches(stream: torch.Tensor, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """`n_samples` windows of `seq_len` tokens at seeded random offsets: (n_samples, seq_len)."""
    if n_samples < 1 or seq_len < 2:
        raise SlimdeployError(f"calibration needs n_samples >= 1 and seq_len >= 2 (got {n_samples}, {seq_len})")
    if len(stream) < seq_len + 1:
        raise SlimdeployError(
            f"calibration text too short: {len(stream)} tokens for windows of {seq_len}; "
            "pass more text or a smaller seq_len"
        )
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (n_samples,), generator=g)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def calibration_data(
    tokenizer, source: str | None, n_samples: int, seq_len: int, seed: int = 0, split: str = "calibration"
) -> tuple[torch.Tensor, dict]:
    """Seeded calibration windows from a source (None: the demo corpus' calibration split) + fingerprint."""
    texts = load_texts(source, split=split)
    stream = token_stream(tokenizer, texts.docs, "bos")
    batches = calibration_batches(stream, n_samples, seq_len, seed)
    return batches, {**texts.fingerprint, "n_samples": n_samples, "seq_len": seq_len, "seed": seed}
