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


def test_window_nll_in_slices_equals_full_logits_and_bounds_the_head():
    """Scoring a slice of positions at a time gives the full-logits NLL, and the LM head never produces more
    than the budget of logits at once (the 14 GB peak of 2,048-token windows came from that)."""
    from slimdeploy.evaluate.perplexity import token_nll, window_nll
    from slimdeploy.load.tiny import build_tiny_model

    model = build_tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16).eval()
    ids = torch.randint(0, model.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    seen: list[int] = []
    model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.numel()))
    with torch.no_grad():
        full = token_nll(model(input_ids=ids).logits, ids)
        seen.clear()
        budget = 3 * 7 * model.config.vocab_size  # 7 positions of 3 rows at a time
        sliced = window_nll(model, ids, budget=budget)
    assert sliced.shape == full.shape == (3, 39)
    torch.testing.assert_close(sliced, full, atol=1e-5, rtol=1e-5)
    assert len(seen) == 6 and max(seen) <= budget  # ceil(39 / 7) slices
