"""GGUF loading: a llama.cpp-layout file (with a 0xFFFFFFFF special-token id) loads and matches the source."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import run_cli
from gguf_writer import write_llama_gguf

from slimdeploy.load.model import load_model
from slimdeploy.load.tiny import build_tiny_model


@pytest.fixture
def gguf_file(tmp_path, tokenizer):
    model = build_tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16, num_attention_heads=4)
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(model, tokenizer, path)
    return model, path


def test_gguf_with_invalid_special_id_loads_and_matches(gguf_file):
    model, path = gguf_file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_model(str(path))
    assert "padding_token_id" in loaded.model.slimdeploy_gguf_dropped
    x = torch.arange(3, 40)[None]
    with torch.no_grad():
        want = model(input_ids=x).logits
        got = loaded.model(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert loaded.tokenizer("def f(x):")["input_ids"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # input untouched


def test_gguf_eval_from_cli(gguf_file, capsys, text_file, tokenizer):
    """The CLI's perplexity of the GGUF equals the source model's, computed here in-process."""
    import json

    from slimdeploy.evaluate.api import evaluate_loaded

    model, path = gguf_file
    args = ["--data", str(text_file), "--context-length", "32", "--max-tokens", "100"]
    code, out, err = run_cli(["eval", "--model", str(path), *args, "--json"], capsys)
    assert code == 0, err
    expected = evaluate_loaded(model, tokenizer, str(text_file), {"context_length": 32}, max_tokens=100)
    got = json.loads(out)
    assert got["tokens_scored"] == expected["tokens_scored"] == 99
    assert got["ppl"] == pytest.approx(expected["ppl"], rel=1e-4)


def test_not_a_gguf(tmp_path, capsys, text_file):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    code, _, err = run_cli(["eval", "--model", str(bad), "--data", str(text_file)], capsys)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1


def test_unsupported_quantization_type_is_one_line(tmp_path, tokenizer, capsys):
    import gguf

    model = build_tiny_model("llama", hidden_size=64, intermediate_size=256, head_dim=16, num_attention_heads=4)
    path = tmp_path / "q81.gguf"
    write_llama_gguf(model, tokenizer, path, down0_type=gguf.GGMLQuantizationType.Q8_1)
    code, _, err = run_cli(["inspect", str(path)], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: cannot load GGUF file"), err
