"""Removing a group equals zeroing it: for every group kind and family, fp32 logits within 1e-5."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids

from slimdeploy.analyze.adapters import decoder_layers, linears
from slimdeploy.load.tiny import FAMILIES, build_tiny_model
from slimdeploy.prune.apply import apply_plan, sync_config
from slimdeploy.prune.plan import LayerPlan, PrunePlan


def _zero_rows(lin, rows):
    lin.weight.data[rows] = 0
    if lin.bias is not None:
        lin.bias.data[rows] = 0


def _keep(n, removed):
    return torch.tensor([i for i in range(n) if i not in removed])


def _full_plan(model):
    return [LayerPlan(None, None, None) for _ in decoder_layers(model)]


def _logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


CASES = [(f, t) for f in FAMILIES for t in (False, True)]


@pytest.mark.parametrize("family,tied", CASES)
@pytest.mark.parametrize("kind", ["mlp", "head", "kv", "layer"])
def test_removing_equals_zeroing(family, tied, kind):
    model = build_tiny_model(family, tied=tied)
    zeroed = copy.deepcopy(model)
    x = ids()
    layer_idx = 1
    lz = linears(decoder_layers(zeroed)[layer_idx])
    hd, r = 8, 2  # tiny: head_dim 8, 4 heads in 2 KV groups
    plan = PrunePlan(layers=[None] * 3)
    if kind == "mlp":
        removed = [3, 17, 40]
        for name in ("gate", "up"):
            _zero_rows(lz[name], removed)
        lz["down"].weight.data[:, removed] = 0
        plan.layers[layer_idx] = LayerPlan(
            mlp_keep=_keep(48, removed), heads_keep=torch.arange(4), kv_keep=torch.arange(2)
        )
    elif kind == "head":
        removed_heads = [1, 2]  # one head from each KV group
        rows = [h * hd + j for h in removed_heads for j in range(hd)]
        _zero_rows(lz["q"], rows)
        lz["o"].weight.data[:, rows] = 0
        plan.layers[layer_idx] = LayerPlan(
            mlp_keep=torch.arange(48), heads_keep=_keep(4, removed_heads), kv_keep=torch.arange(2)
        )
    elif kind == "kv":
        g = 0
        qrows = list(range(g * r * hd, (g + 1) * r * hd))
        kvrows = list(range(g * hd, (g + 1) * hd))
        _zero_rows(lz["q"], qrows)
        _zero_rows(lz["k"], kvrows)
        _zero_rows(lz["v"], kvrows)
        lz["o"].weight.data[:, qrows] = 0
        plan.layers[layer_idx] = LayerPlan(
            mlp_keep=torch.arange(48), heads_keep=torch.tensor([2, 3]), kv_keep=torch.tensor([1])
        )
    else:
        lz["o"].weight.data.zero_()
        lz["down"].weight.data.zero_()
        plan.layers_keep = [0, 2]
    expected = _logits(zeroed, x)
    apply_plan(model, plan)
    got = _logits(model, x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in zeroed.parameters())
    # the cache path must agree too: greedy tokens with the KV cache equal the zeroed model's
    want = zeroed.generate(x[:1, :5], max_new_tokens=4, do_sample=False, min_new_tokens=4)
    out = model.generate(x[:1, :5], max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape == (1, 9) and torch.equal(out, want)


def test_uniform_config_describes_pruned_model(tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_tiny_model("qwen2")
    plan = PrunePlan(
        layers=[LayerPlan(torch.arange(0, 48, 2), torch.tensor([0, 2]), torch.tensor([0, 1])) for _ in range(3)]
    )
    apply_plan(model, plan)
    assert sync_config(model)
    assert model.config.intermediate_size == 24 and model.config.num_attention_heads == 2
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    x = ids()
    assert torch.allclose(_logits(reloaded, x), _logits(model, x), atol=1e-6)
