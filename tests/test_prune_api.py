"""Allocation and the prune stage on tiny models: targets met, constraints kept, bad input refused."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids
from pydantic import ValidationError

from slimdeploy.errors import SlimdeployError
from slimdeploy.load.tiny import build_tiny_model
from slimdeploy.prune.api import PruneConfig, prune
from slimdeploy.score.registry import criterion_names


def _big(family="llama", tied=False):
    # 8 heads in 2 KV groups, head_dim 16, hidden 128: enough room for head and channel choices
    return build_tiny_model(
        family,
        tied=tied,
        hidden_size=128,
        num_attention_heads=8,
        head_dim=16,
        intermediate_size=256,
        num_hidden_layers=4,
        vocab_size=512,
    )


def _calib(n=4, seq=32):
    return torch.randint(1, 512, (n, seq), generator=torch.Generator().manual_seed(3))


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("criterion", criterion_names())
def test_every_criterion_prunes_to_target(criterion):
    model = _big()
    p0 = _params(model)
    rep, _ = prune(model, PruneConfig(ratio=0.2, criterion=criterion, round_to=16), _calib())
    assert abs(rep["removed_fraction"] - 0.2) < 0.02
    assert _params(model) == rep["params_after"] < p0
    cfg = model.config
    assert cfg.hidden_size % cfg.num_attention_heads == 0
    assert cfg.intermediate_size % 16 == 0
    out = model(input_ids=ids(vocab=512)).logits
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family,tied", [("qwen2", False), ("qwen3", True), ("mistral", True)])
def test_families_and_tied_embeddings(family, tied):
    model = _big(family, tied)
    rep, _ = prune(
        model, PruneConfig(ratio=0.3, criterion="wanda", round_to=16, structures=["mlp", "head", "kv"]), _calib()
    )
    assert abs(rep["removed_fraction"] - 0.3) < 0.02
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_global_allocation_gives_per_layer_widths(tmp_path):
    from slimdeploy.load.checkpoint import save_model
    from slimdeploy.load.model import load_model

    model = _big()
    rep, record = prune(
        model,
        PruneConfig(
            ratio=0.3, criterion="wanda", allocation="global", round_to=16, structures=["mlp", "kv"], protect_first=1
        ),
        _calib(),
    )
    widths = rep["widths"]
    assert widths[0]["intermediate"] == 256  # protected
    assert all(w["intermediate"] < 256 for w in widths[1:])  # the target is met in the unprotected layers only
    assert abs(rep["removed_fraction"] - 0.3) < 0.03
    save_model(model, None, tmp_path, record)
    from transformers import AutoTokenizer

    from slimdeploy.load.model import demo_model_dir

    AutoTokenizer.from_pretrained(demo_model_dir()).save_pretrained(tmp_path)
    again = load_model(str(tmp_path)).model
    x = ids(vocab=512)
    with torch.no_grad():
        assert torch.allclose(again(input_ids=x).logits, model(input_ids=x).logits, atol=1e-5)
    from slimdeploy.prune.record import PruneRecord

    saved = PruneRecord.load(tmp_path)
    assert saved.layers[0]["mlp_keep"] == list(range(256))
    assert [len(e["mlp_keep"]) for e in saved.layers] == [w["intermediate"] for w in widths]


def test_depth_pruning_drops_layers_by_block_influence():
    model = _big()
    rep, _ = prune(model, PruneConfig(ratio=0.2, criterion="wanda", structures=["layer"]), _calib())
    assert model.config.num_hidden_layers == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    assert rep["removed_fraction"] > 0.1
    model.generate(ids(vocab=512)[:1, :4], max_new_tokens=3, do_sample=False)  # KV cache indices still right


def test_tp_divisibility():
    model = _big()
    prune(model, PruneConfig(ratio=0.2, criterion="l2", round_to=16, tp_size=2, structures=["mlp", "head", "kv"]), None)
    cfg = model.config
    assert cfg.num_attention_heads % 2 == 0 and cfg.num_key_value_heads % 2 == 0 and cfg.intermediate_size % 2 == 0


def test_pruning_a_pruned_model_composes_the_record():
    model = _big()
    original = copy.deepcopy(model)
    _, first = prune(model, PruneConfig(ratio=0.2, criterion="l2", round_to=16), None)
    _, rec = prune(model, PruneConfig(ratio=0.2, criterion="l2", round_to=16), None, record=first)
    for a, b in zip(first.layers, rec.layers):
        assert set(b["mlp_keep"]) < set(a["mlp_keep"])  # indices stay relative to the original model
    assert rec.original["intermediate_size"] == 256
    for i, entry in enumerate(rec.layers):  # the kept rows, looked up in the original, are the pruned weights
        up0 = original.model.layers[entry["source_layer"]].mlp.up_proj.weight
        assert torch.equal(model.model.layers[i].mlp.up_proj.weight, up0[entry["mlp_keep"]])


def test_multishot_surgeon_with_update():
    model = _big()
    rep, _ = prune(model, PruneConfig(ratio=0.3, criterion="surgeon", round_to=16, shots=2), _calib())
    assert len(rep["shots"]) == 2 and rep["update"] == "cols"
    assert abs(rep["removed_fraction"] - 0.3) < 0.02


@pytest.mark.parametrize(
    "bad", [{"ratio": 0}, {"ratio": 1.0}, {"ratio": -0.1}, {"criterion": "magic"}, {"structures": []}, {"bogus_key": 1}]
)
def test_bad_config_rejected(bad):
    with pytest.raises(ValidationError):
        PruneConfig(**bad)


def test_impossible_target_says_what_is_achievable():
    model = _big()
    with pytest.raises(SlimdeployError, match="achievable up to"):
        prune(model, PruneConfig(ratio=0.9, criterion="l2", round_to=16, structures=["head"]), None)


def test_calibration_too_short(tokenizer):
    from slimdeploy.load.data import calibration_batches, token_stream

    stream = token_stream(tokenizer, ["x = 1"])
    with pytest.raises(SlimdeployError, match="too short"):
        calibration_batches(stream, 4, 128)


def test_unsupported_family_for_pruning():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(SlimdeployError, match="supported: llama, mistral, qwen2, qwen3"):
        prune(model, PruneConfig(ratio=0.2, criterion="l2"), None)


def test_loraprune_hooks_equal_the_lora_gradient_estimate():
    """Fresh adapters (B = 0): E = |s (G A^T) A * W| with G the full-weight gradient; the hook version never
    forms G, so this checks it against autograd."""
    import math

    from slimdeploy.analyze.adapters import decoder_layers, linears
    from slimdeploy.score.loraprune import fresh_lora_A, loraprune_maps

    model = build_tiny_model("llama").eval()
    batch = ids(1, 12)
    scored = copy.deepcopy(model)
    maps = loraprune_maps(scored, batch, rank=4, seed=3)
    assert all(p.requires_grad for p in scored.parameters()) and all(p.grad is None for p in scored.parameters())
    for p in model.parameters():
        p.requires_grad_(True)
    model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
    gen = torch.Generator().manual_seed(3)
    for li, layer in enumerate(decoder_layers(model)):
        for name, lin in linears(layer).items():
            A = fresh_lora_A(lin.in_features, 4, gen)
            E = (2.0 * (lin.weight.grad @ A.T) @ A * lin.weight).abs()
            rows, cols = maps[li][name]
            torch.testing.assert_close(rows, E.sum(1), rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(cols, E.sum(0), rtol=1e-4, atol=1e-7)
    assert math.isclose(fresh_lora_A(64, 2, gen).abs().max().item(), 1 / 8, rel_tol=0.2)  # PEFT's bound


@pytest.mark.parametrize("structures", [["mlp", "head"], ["mlp", "kv"]])
@pytest.mark.parametrize("shots", [1, 3])
def test_global_allocation_meets_the_target_on_per_layer_widths(structures, shots):
    # layers left at different widths (by an earlier global shot or prune) must still lose the share asked;
    # measured on SmolLM2 before this was fixed: 3 global shots at 20% removed only 12.4%
    model = _big()
    first = PruneConfig(ratio=0.2, criterion="l2", allocation="global", round_to=16, structures=["mlp"])
    # layer 0 stays whole, the widest, as SmolLM2's first layers were kept
    prune(model, first.model_copy(update={"protect_first": 1}), None)
    widths = [layer.mlp.gate_proj.out_features for layer in model.model.layers]
    assert widths[0] == 256 and max(widths[1:]) < 256
    p0 = _params(model)
    cfg = PruneConfig(ratio=0.3, criterion="l2", allocation="global", round_to=16, structures=structures, shots=shots)
    prune(model, cfg, None)
    assert abs((1 - _params(model) / p0) - 0.3) < 0.03


def test_uniform_refuses_per_layer_widths():
    model = _big()
    prune(model, PruneConfig(ratio=0.3, criterion="l2", allocation="global", round_to=16, structures=["mlp"]), None)
    assert len({layer.mlp.gate_proj.out_features for layer in model.model.layers}) > 1
    with pytest.raises(SlimdeployError, match="different widths.*allocation global"):
        prune(model, PruneConfig(ratio=0.2, criterion="l2", round_to=16), None)


def test_plan_far_from_the_target_is_refused(monkeypatch):
    import slimdeploy.prune.plan as plan

    monkeypatch.setattr(plan, "_round_counts", lambda raw, full, total, round_to: full)  # a bug: keeps every channel
    with pytest.raises(SlimdeployError, match="the plan removes"):
        prune(_big(), PruneConfig(ratio=0.3, criterion="l2", allocation="global", round_to=16), None)
