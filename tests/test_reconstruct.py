"""Reconstruction after pruning: the ridge solve against an independent least-squares solve, the refit
against one computed from hooks written here, and less layer / logit error than slicing alone."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from slimdeploy.errors import SlimdeployError
from slimdeploy.load.tiny import build_tiny_model
from slimdeploy.prune.api import PruneConfig, prune
from slimdeploy.prune.reconstruct import layer_error, reconstruct, ridge_accumulate, ridge_solve
from slimdeploy.score.stats import catch_layer0_inputs


def _model():
    return build_tiny_model(
        hidden_size=64, num_attention_heads=8, head_dim=8, intermediate_size=128, num_hidden_layers=3, vocab_size=512
    )


def _calib(n=6, seq=48, seed=3):
    return torch.randint(1, 512, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_ridge_solve_matches_augmented_lstsq():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 20, generator=g, dtype=torch.float64) @ torch.randn(20, 20, generator=g, dtype=torch.float64)
    y = torch.randn(300, 7, generator=g, dtype=torch.float64)
    acc: dict = {}
    ridge_accumulate(acc, x[:120], y[:120])  # two batches: the sums must add up
    ridge_accumulate(acc, x[120:], y[120:])
    prior = torch.randn(7, 20, generator=g, dtype=torch.float64)
    W = ridge_solve(acc, prior, damp=0.05)
    # independent: ridge toward `prior` as ordinary least squares on [X; sqrt(lam) I] -> [Y; sqrt(lam) prior^T]
    lam = 0.05 * (x * x).sum(0).mean()
    xa = torch.cat([x, lam.sqrt() * torch.eye(20, dtype=torch.float64)])
    ya = torch.cat([y, lam.sqrt() * prior.T])
    expected = torch.linalg.lstsq(xa, ya).solution.T
    torch.testing.assert_close(W, expected, rtol=1e-8, atol=1e-10)


def _pruned_pair(ratio=0.3):
    dense = _model()
    model = copy.deepcopy(dense)
    prune(model, PruneConfig(ratio=ratio, criterion="l2", round_to=8), None)
    return model, dense


def test_local_o_proj_refit_equals_independent_solve():
    model, dense = _pruned_pair()
    batches = _calib()
    with torch.no_grad():
        hidden, kwargs = catch_layer0_inputs(model, batches)
    layer, dl = model.model.layers[0], dense.model.layers[0]
    xs, ys = [], []  # the test's own hooks: the pruned o_proj's input and the dense attention's output
    h1 = layer.self_attn.o_proj.register_forward_hook(lambda m, a, o: xs.append(a[0].reshape(-1, a[0].shape[-1])))
    h2 = dl.self_attn.register_forward_hook(lambda m, a, o: ys.append(o[0].reshape(-1, o[0].shape[-1])))
    with torch.no_grad():
        for h in hidden:
            layer(h, **kwargs)
            dl(h, **kwargs)
    h1.remove()
    h2.remove()
    X, Y = torch.cat(xs).double(), torch.cat(ys).double()
    lam = 0.01 * (X * X).sum(0).mean()
    Xa = torch.cat([X, lam.sqrt() * torch.eye(X.shape[1], dtype=torch.float64)])
    Ya = torch.cat([Y, lam.sqrt() * layer.self_attn.o_proj.weight.detach().double().T])
    expected = torch.linalg.lstsq(Xa, Ya).solution.T.float()
    reconstruct(model, dense, batches, "ridge", "local")
    torch.testing.assert_close(layer.self_attn.o_proj.weight, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method,target", [("ridge", "local"), ("ridge", "stream"), ("block", "local")])
def test_reconstruction_lowers_layer_error(method, target):
    model, dense = _pruned_pair()
    batches = _calib()
    rows = reconstruct(model, dense, batches, method, target, steps=20, lr=1e-3)
    assert len(rows) == 3
    for r in rows:
        assert r["mse_after"] < r["mse_before"], r
    # on held-out inputs too (not only the calibration tokens it was fitted on)
    held = _calib(seed=11)
    with torch.no_grad():
        hidden, kwargs = catch_layer0_inputs(model, held)
    fresh, _ = _pruned_pair()
    assert layer_error(model.model.layers[0], dense.model.layers[0], hidden, kwargs) < layer_error(
        fresh.model.layers[0], dense.model.layers[0], hidden, kwargs
    )


def test_prune_with_reconstruct_brings_logits_closer_to_dense():
    dense = _model()
    held = _calib(n=2, seed=21)
    with torch.no_grad():
        ref = dense(held).logits
    errs = {}
    for rec in ("none", "ridge"):
        model = copy.deepcopy(dense)
        report, _ = prune(model, PruneConfig(ratio=0.3, criterion="wanda", round_to=8, reconstruct=rec), _calib())
        with torch.no_grad():
            errs[rec] = (model(held).logits - ref).pow(2).mean().item()
        if rec == "ridge":
            shot = report["reconstruct"]
            assert shot["layer_mse_after"] < shot["layer_mse_before"]
    assert errs["ridge"] < errs["none"], errs


def test_reconstruct_refusals():
    with pytest.raises(ValidationError, match="layer dropping"):
        PruneConfig(reconstruct="ridge", structures=["mlp", "layer"])
    with pytest.raises(SlimdeployError, match="calibration text"):
        prune(_model(), PruneConfig(ratio=0.2, criterion="l2", round_to=8, reconstruct="ridge"), None)
    from slimdeploy.prune.sequential import check_sequential

    with pytest.raises(SlimdeployError, match="dense copy"):
        check_sequential(PruneConfig(criterion="wanda", reconstruct="ridge"))
