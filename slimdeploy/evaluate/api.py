"""The eval stage: model + text source -> perplexity report (numbers, protocol, data fingerprint)."""

from __future__ import annotations

from contextlib import nullcontext

from slimdeploy.errors import SlimdeployError
from slimdeploy.evaluate.perplexity import PerplexityProtocol, perplexity


def default_protocol(
    model, context_length: int | None = None, stride: int | None = None, boundary: str = "bos", doc_split: str = "none"
) -> PerplexityProtocol:
    max_pos = getattr(model.config, "max_position_embeddings", None) or 512
    if context_length is not None and context_length < 2:
        raise SlimdeployError(f"--context-length {context_length}: give at least 2 tokens")
    if stride is not None and stride < 1:
        raise SlimdeployError(f"--stride {stride}: give 1 or more")
    ctx = context_length or min(512, max_pos)
    if ctx > max_pos:
        raise SlimdeployError(f"--context-length {ctx} exceeds the model's max_position_embeddings {max_pos}")
    return PerplexityProtocol(ctx, stride or max(1, ctx // 2), boundary, doc_split)


def evaluate_loaded(
    model,
    tokenizer,
    data: str | None,
    protocol_args: dict,
    max_tokens: int | None = None,
    batch_size: int = 8,
    progress=None,
    protocol_name: str = "sliding",
) -> dict:
    """Perplexity of an in-memory model on a text source (None: the demo corpus' held-out split).

    `protocol_name` "wikitext2" / "llm-pruner" use the papers' protocols (protocols.py) on WikiText-2."""
    from slimdeploy.load.data import load_texts, split_documents, token_stream
    from slimdeploy.load.model import require_tokenizer

    require_tokenizer(tokenizer, "eval stage (perplexity)")
    if protocol_name != "sliding":
        return _evaluate_named(model, tokenizer, data, protocol_name, max_tokens, batch_size, progress)
    source = load_texts(data, split="eval")
    protocol = default_protocol(model, **protocol_args)
    docs = split_documents(source.docs, protocol.doc_split) if source.kind == "text" else source.docs
    stream = token_stream(tokenizer, docs, protocol.boundary)
    if max_tokens:
        stream = stream[:max_tokens]
    result = perplexity(model, stream, protocol, batch_size=batch_size, progress=progress)
    result["data"] = source.fingerprint
    return result


def _evaluate_named(model, tokenizer, data, name: str, max_tokens, batch_size, progress) -> dict:
    from slimdeploy.evaluate.protocols import WIKITEXT_HUB, named_protocol, protocol_stream, wikitext_rows

    protocol = named_protocol(name, getattr(model.config, "max_position_embeddings", None))
    if data is None:
        raise SlimdeployError(
            f"the {name} protocol scores WikiText-2's raw test split: pass --data path/to/wiki.test.raw "
            f"(or {WIKITEXT_HUB})"
        )
    rows, fingerprint = wikitext_rows(data)
    stream = protocol_stream(tokenizer, rows)
    if max_tokens:
        stream = stream[:max_tokens]
    result = perplexity(model, stream, protocol, batch_size=batch_size, progress=progress)
    result["data"] = {**fingerprint, "tokens": int(len(stream))}
    return result


def evaluate_perplexity(
    model_spec,
    data,
    context_length=None,
    stride=None,
    boundary="bos",
    doc_split="none",
    max_tokens=None,
    batch_size=8,
    dtype="fp32",
    trust_remote_code=False,
    progress_factory=None,
    protocol="sliding",
    device="cpu",
) -> dict:
    """The `slimdeploy eval` stage: load, then score."""
    from slimdeploy.load.model import load_model

    loaded = load_model(model_spec, dtype, trust_remote_code, device=device)
    bar = progress_factory("perplexity") if progress_factory else nullcontext(None)
    with bar as update:
        result = evaluate_loaded(
            loaded.model,
            loaded.tokenizer,
            data,
            {"context_length": context_length, "stride": stride, "boundary": boundary, "doc_split": doc_split},
            max_tokens,
            batch_size,
            update,
            protocol,
        )
    result["model"] = loaded.source
    result["dtype"] = dtype
    return result


def evaluate_zero_shot(
    model_spec, tasks: list[str], task_data, limit, batch_size, dtype, trust_remote_code, seed=0, ppl=None,
    progress_factory=None, device="cpu",
) -> dict:  # fmt: skip
    """`slimdeploy eval --tasks`: zero-shot accuracy (and, with ppl_args, perplexity) from one load."""
    from pathlib import Path

    from slimdeploy.evaluate.zeroshot import check_tasks, zero_shot
    from slimdeploy.load.model import load_model, require_tokenizer

    task_data = Path(task_data) if task_data else None
    check_tasks(tasks, task_data, limit)  # before the model loads
    loaded = load_model(model_spec, dtype, trust_remote_code, device=device)
    require_tokenizer(loaded.tokenizer, "zero-shot evaluation")
    result = {"model": loaded.source, "dtype": dtype}
    result["zero_shot"] = zero_shot(loaded.model, loaded.tokenizer, tasks, task_data, limit, batch_size, seed)
    if ppl is not None:  # {"data": source, "protocol": name}
        bar = progress_factory("perplexity") if progress_factory else nullcontext(None)
        with bar as update:
            result["perplexity"] = evaluate_loaded(
                loaded.model, loaded.tokenizer, ppl["data"], {}, progress=update, protocol_name=ppl["protocol"]
            )
    return result
