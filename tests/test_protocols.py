"""Named perplexity protocols equal the papers' own computations, written here independently."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_cli

from slimdeploy.evaluate.api import evaluate_loaded
from slimdeploy.evaluate.protocols import named_protocol, wikitext_rows
from slimdeploy.load.tiny import build_tiny_model

RAW = " \n = Title = \n \n Some text , with @-@ tokens .\n \n = = Section = = \n More text here .\n"


@pytest.fixture
def raw_file(tmp_path):
    path = tmp_path / "wiki.test.raw"
    path.write_text(RAW * 40)
    return path


def test_rows_follow_the_hub_loader(raw_file):
    rows, fp = wikitext_rows(str(raw_file))
    lines = RAW.splitlines(keepends=True)
    # the hub's wikitext script: a whitespace-only line becomes "", others keep their newline
    assert rows[:7] == [
        "",
        " = Title = \n",
        "",
        " Some text , with @-@ tokens .\n",
        "",
        " = = Section = = \n",
        " More text here .\n",
    ]
    assert len(rows) == 40 * len(lines) and fp["rows"] == len(rows)


def _sparsegpt_ppl(model, ids: torch.Tensor, seqlen: int) -> float:
    """SparseGPT's eval loop: nsamples = numel // seqlen; nll = loss * seqlen; exp(sum / (nsamples*seqlen))."""
    nsamples = ids.numel() // seqlen
    nlls = []
    with torch.no_grad():
        for i in range(nsamples):
            batch = ids[i * seqlen : (i + 1) * seqlen][None]
            logits = model(batch).logits
            loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), batch[0, 1:])
            nlls.append(loss.float() * seqlen)
    return torch.exp(torch.stack(nlls).sum() / (nsamples * seqlen)).item()


def _llm_pruner_ppl(model, ids: torch.Tensor, seqlen: int) -> float:
    """LLM-Pruner's PPLMetric: per-token losses of all windows concatenated, exp of their mean."""
    nsamples = ids.numel() // seqlen
    losses = []
    with torch.no_grad():
        for i in range(nsamples):
            batch = ids[i * seqlen : (i + 1) * seqlen][None]
            logits = model(batch).logits
            losses.append(torch.nn.functional.cross_entropy(logits[0, :-1].float(), batch[0, 1:], reduction="none"))
    return math.exp(torch.cat(losses).mean().item())


@pytest.mark.parametrize("name", ["wikitext2", "llm-pruner"])
def test_named_protocols_equal_the_papers_loops(name, raw_file, tokenizer):
    model = build_tiny_model("llama", max_position_embeddings=96)
    r = evaluate_loaded(model, tokenizer, str(raw_file), {}, batch_size=3, protocol_name=name)
    rows = [ln if ln.strip() else "" for ln in raw_file.read_text().splitlines(keepends=True)]
    ids = tokenizer("\n\n".join(rows), return_tensors="pt")["input_ids"][0]
    seqlen = 96 if name == "wikitext2" else 128  # wikitext2: the model's context (capped at 2048)
    expected = (_sparsegpt_ppl if name == "wikitext2" else _llm_pruner_ppl)(model, ids, seqlen)
    assert r["protocol"]["context_length"] == seqlen and r["protocol"]["chunked"]
    assert r["tokens_scored"] == (ids.numel() // seqlen) * (seqlen - 1)
    assert math.isclose(r["ppl"], expected, rel_tol=1e-4), (r["ppl"], expected)


def test_wikitext2_window_is_capped_at_2048():
    assert named_protocol("wikitext2", 8192).context_length == 2048
    assert named_protocol("wikitext2", 512).context_length == 512


def test_cli_protocol_needs_data_and_reports_it(tiny_dir, raw_file, capsys):
    code, _, err = run_cli(["eval", "--model", str(tiny_dir), "--protocol", "wikitext2"], capsys)
    assert code == 1 and "wiki.test.raw" in err
    code, _, err = run_cli(["eval", "--model", str(tiny_dir), "--protocol", "nope", "--data", str(raw_file)], capsys)
    assert code == 1 and "unknown perplexity protocol" in err
    code, out, err = run_cli(
        ["eval", "--model", str(tiny_dir), "--protocol", "llm-pruner", "--data", str(raw_file), "--json"], capsys
    )
    assert code == 0, err
    import json

    assert json.loads(out)["protocol"]["name"] == "llm-pruner"
