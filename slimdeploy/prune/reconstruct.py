"""Rebuild what pruning removed from the dense model itself, before any recovery token is spent.

Layer by layer over the calibration data, like the sequential path (one layer's activations at a time), with
the *pruned* model's own inputs so that errors do not compound (SliceGPT, ZipLM, "A Free Lunch in LLM
Compression"):

- `ridge`: the consumer projections (`o_proj`, `down_proj`) are refitted in closed form, on the kept channels,
  so that the pruned attention / MLP output matches a target: W = Y X^T (X X^T + lam I)^-1.
- `block`: ridge first, then a few Adam steps per decoder layer on all of its weights against the target
  layer output (MSE).

Targets (`reconstruct_target`): `local` is the dense layer applied to the same (pruned) inputs; `stream` is the
dense model's own residual stream at that point, which also asks each layer to absorb what the layers before
it lost. The dense model is a copy kept in memory (prune's peak grows by one model; stated in the docs).
"""

from __future__ import annotations

import torch

from slimdeploy.analyze.adapters import decoder_layers, linears

Acc = dict[str, torch.Tensor]  # running sums of a least-squares problem: "xtx" (in x in), "ytx" (out x in)


def ridge_accumulate(acc: Acc, x: torch.Tensor, y: torch.Tensor) -> None:
    """Add the tokens of one batch (x: (..., in), y: (..., out)) to the normal equations' sums, in fp64."""
    x2 = x.reshape(-1, x.shape[-1]).double()
    y2 = y.reshape(-1, y.shape[-1]).double()
    if "xtx" not in acc:
        acc["xtx"], acc["ytx"] = x2.T @ x2, y2.T @ x2
    else:
        acc["xtx"].addmm_(x2.T, x2)
        acc["ytx"].addmm_(y2.T, x2)


def ridge_solve(acc: Acc, prior: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """argmin_W sum ||y - W x||^2 + lam ||W - prior||^2, lam = damp * mean(diag X X^T) (GPTQ's damping:
    calibration activations are often rank-deficient). The damping pulls toward the current weights `prior`,
    not toward zero: LLM activations have a few channels thousands of times larger than the rest, which set
    lam, and shrinking every other column to zero would do more harm than the fit repairs. Returns W (out x
    in) in fp64: W (X X^T + lam I) = Y X^T + lam prior."""
    xtx = acc["xtx"].clone()
    lam = damp * xtx.diagonal().mean().clamp_min(1e-12)
    xtx.diagonal().add_(lam)
    rhs = acc["ytx"] + lam * prior.double()
    return torch.linalg.solve(xtx, rhs.T).T  # X X^T + lam I is symmetric


def _run(layer, h: torch.Tensor, kwargs: dict) -> torch.Tensor:
    res = layer(h, **kwargs)
    return res[0] if isinstance(res, tuple) else res


def _capture(modules: dict[str, torch.nn.Module], inputs: bool) -> tuple[dict, list]:
    """Forward hooks that keep each module's first input (`inputs`) or output, by name."""
    box: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in modules.items():

        def hook(m, a, o, name=name):
            box[name] = (a[0] if inputs else (o[0] if isinstance(o, tuple) else o)).detach()

        handles.append(mod.register_forward_hook(hook))
    return box, handles


def _release(handles: list) -> None:
    for h in handles:
        h.remove()


@torch.no_grad()
def _dense_targets(dense_layer, inputs: list[torch.Tensor], kwargs: dict) -> tuple[list, list]:
    """The dense layer on `inputs`: (residual stream after attention, layer output) per batch."""
    mids, outs = [], []
    box, handles = _capture({"attn": dense_layer.self_attn}, inputs=False)
    try:
        for h in inputs:
            out = _run(dense_layer, h, kwargs)
            mids.append(h + box["attn"])
            outs.append(out)
    finally:
        _release(handles)
    return mids, outs


@torch.no_grad()
def refit_consumer(layer, name: str, xs: list[torch.Tensor], ys: list[torch.Tensor], damp: float) -> None:
    """Refit `layer`'s projection `name` (o or down; no bias in the supported families) on (x, y) pairs."""
    lin = linears(layer)[name]
    acc: Acc = {}
    for x, y in zip(xs, ys):
        ridge_accumulate(acc, x, y)
    lin.weight.copy_(ridge_solve(acc, lin.weight, damp).to(lin.weight.dtype))


@torch.no_grad()
def _ridge_layer(layer, dense_layer, hidden: list, dense_hidden: list, kwargs: dict, target: str, damp: float):
    """Refit o_proj then down_proj of one pruned layer; returns the dense layer outputs it targeted."""
    lin = linears(layer)
    if target == "stream":  # the dense model's own stream at this depth
        mids, outs = _dense_targets(dense_layer, dense_hidden, kwargs)
    else:  # the dense layer on the pruned model's inputs
        mids, outs = _dense_targets(dense_layer, hidden, kwargs)
    # attention: what o_proj must add to the pruned stream is (target mid - pruned input)
    box, handles = _capture({"o": lin["o"]}, inputs=True)
    xs = []
    try:
        for h in hidden:
            _run(layer, h, kwargs)
            xs.append(box["o"])
    finally:
        _release(handles)
    refit_consumer(layer, "o", xs, [m - h for m, h in zip(mids, hidden)], damp)
    # MLP, on the stream the refitted attention now produces
    box, handles = _capture({"attn": layer.self_attn, "down": lin["down"]}, inputs=False)
    in_box, in_handles = _capture({"down": lin["down"]}, inputs=True)
    xs, ys = [], []
    try:
        for j, h in enumerate(hidden):
            _run(layer, h, kwargs)
            mid = h + box["attn"]
            if target == "local":  # dense MLP on the pruned stream
                ys.append(dense_layer.mlp(dense_layer.post_attention_layernorm(mid)))
            else:
                ys.append(outs[j] - mid)
            xs.append(in_box["down"])
    finally:
        _release(handles + in_handles)
    refit_consumer(layer, "down", xs, ys, damp)
    return outs


def _float_kwargs(kwargs: dict, dtype) -> dict:
    def cast(v):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.to(dtype)
        if isinstance(v, tuple):
            return tuple(cast(x) for x in v)
        return v

    return {k: cast(v) for k, v in kwargs.items()}


def block_steps(layer, hidden: list, targets: list, kwargs: dict, steps: int, lr: float, seed: int) -> list[float]:
    """Adam on all of `layer`'s weights, MSE of its output against `targets`, one batch per step (cycled,
    seeded order); computed in fp32 whatever the weights' dtype. Returns the loss at each step."""
    dtype = next(layer.parameters()).dtype
    layer.float()
    kw = _float_kwargs(kwargs, torch.float32)
    params = [p for p in layer.parameters()]
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    order = torch.randperm(len(hidden), generator=torch.Generator().manual_seed(seed)).tolist()
    losses = []
    try:
        with torch.enable_grad():
            for step in range(steps):
                j = order[step % len(order)]
                out = _run(layer, hidden[j].float(), kw)
                loss = torch.nn.functional.mse_loss(out, targets[j].float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
            p.grad = None
        layer.to(dtype)
    return losses


@torch.no_grad()
def layer_error(layer, dense_layer, hidden: list, kwargs: dict) -> float:
    """Mean squared difference between the pruned and the dense layer's outputs on the same inputs."""
    tot, n = 0.0, 0
    for h in hidden:
        d = (_run(layer, h, kwargs).double() - _run(dense_layer, h, kwargs).double()).pow(2)
        tot += d.sum().item()
        n += d.numel()
    return tot / max(1, n)


def reconstruct(
    model,
    dense,
    batches: torch.Tensor,
    method: str,
    target: str,
    steps: int = 0,
    lr: float = 1e-4,
    damp: float = 0.01,
    seed: int = 0,
    progress=None,
) -> list[dict]:
    """Reconstruct every layer of pruned `model` (in place) from `dense` (same depth, unchanged); returns, per
    layer, the output error against the dense layer on the pruned inputs before and after."""
    from slimdeploy.score.stats import catch_layer0_inputs

    with torch.no_grad():
        hidden, kwargs = catch_layer0_inputs(model, batches)
        # embeddings are never pruned: the dense stream starts from the same inputs (read by stream targets only)
        dense_hidden = [h.clone() for h in hidden] if target == "stream" else []
    layers, dense_layers = decoder_layers(model), decoder_layers(dense)
    report = []
    for li, (layer, dl) in enumerate(zip(layers, dense_layers)):
        before = layer_error(layer, dl, hidden, kwargs)
        outs = _ridge_layer(layer, dl, hidden, dense_hidden, kwargs, target, damp)
        if method == "block":
            block_steps(layer, hidden, outs, kwargs, steps, lr, seed + li)
        after = layer_error(layer, dl, hidden, kwargs)
        report.append({"layer": li, "mse_before": before, "mse_after": after})
        with torch.no_grad():  # next layer's inputs: each model's own outputs
            hidden = [_run(layer, h, kwargs) for h in hidden]
            dense_hidden = outs if target == "stream" else []
        if progress:
            progress(li + 1, len(layers))
    return report
