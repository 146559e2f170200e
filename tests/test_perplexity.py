"""Sliding-window perplexity equals a plain teacher-forced computation over the same tokens."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import shared_path

from slimdeploy.evaluate.perplexity import PerplexityProtocol, perplexity, token_nll, windows
from slimdeploy.load.tiny import build_tiny_model


@pytest.mark.parametrize("n,ctx,stride", [(100, 32, 32), (100, 32, 8), (33, 32, 16), (257, 64, 63)])
def test_every_target_scored_once(n, ctx, stride):
    seen = []
    for b, e, first in windows(n, ctx, stride):
        assert e - b <= ctx and first > b
        seen.extend(range(first, e))
    assert seen == list(range(1, n))


def test_single_window_equals_plain_loss():
    model = build_tiny_model("qwen3")
    stream = torch.randint(1, 8192, (64,), generator=torch.Generator().manual_seed(1))
    r = perplexity(model, stream, PerplexityProtocol(context_length=64, stride=64))
    with torch.no_grad():
        plain = model(input_ids=stream[None], labels=stream[None]).loss.item()
    assert r["tokens_scored"] == 63
    assert math.isclose(r["nll"], plain, rel_tol=1e-5)


def test_overlapping_windows_equal_brute_force():
    """Each target t scored in window (b, e) must get exactly the NLL of a forward pass on stream[b:t+1]."""
    model = build_tiny_model("mistral", tied=True)
    stream = torch.randint(1, 8192, (90,), generator=torch.Generator().manual_seed(2))
    ctx, stride = 32, 12
    r = perplexity(model, stream, PerplexityProtocol(ctx, stride), batch_size=3)
    total = 0.0
    with torch.no_grad():
        for b, e, first in windows(len(stream), ctx, stride):
            for t in range(first, e):
                ids = stream[b : t + 1][None]
                total += token_nll(model(input_ids=ids).logits, ids)[0, -1].item()
    assert math.isclose(r["nll"], total / (len(stream) - 1), rel_tol=1e-5)


def test_stories260k_reference_figure():
    """The README's figure: stories260K on the TinyStories dev text, default protocol."""
    from slimdeploy.evaluate.api import evaluate_perplexity

    model = shared_path("models/stories260K")
    text = shared_path("text/tinystories-valid-dev.txt")
    r = evaluate_perplexity(str(model), str(text))  # the whole file, as the README states it
    assert r["tokens_scored"] == 287_410
    assert r["nll"] == pytest.approx(1.60342, abs=5e-5) and r["ppl"] == pytest.approx(4.970, abs=5e-4)
