"""Calibration statistics, gathered with hooks (the only impure part of scoring).

- `layerwise_input_stats`: the SparseGPT/Wanda pipeline: catch the inputs of layer 0, then run one decoder
  layer at a time over all calibration samples, so peak memory beyond the model is one layer's activations.
  Collects per-linear input moments (and covariances when asked) and each layer's block influence
  (ShortGPT: 1 - cos(input, output) of the residual stream), used to rank whole layers.
- `gradient_stats`: a full forward/backward of the LM loss (gradients need the whole graph) collecting
  per-linear input covariance A and output-gradient covariance G (K-FAC, empirical Fisher) and, when asked,
  full-weight gradients (the memory-heavy Taylor reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from slimdeploy.analyze.adapters import decoder_layers, linears


@dataclass
class InputStats:
    n: int = 0
    sum: torch.Tensor | None = None
    sumsq: torch.Tensor | None = None
    cov: torch.Tensor | None = None  # sum of x x^T, accumulated in fp32
    keep_cov: bool = True  # False: A_inv frees the sum (sequential pruning, where the inverse is its last use)

    def add(self, x: torch.Tensor, with_cov: bool) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        xd = x.double()
        self.n += x.shape[0]
        s, ss = xd.sum(0), (xd * xd).sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = ss if self.sumsq is None else self.sumsq + ss
        if with_cov:
            # fp32: half the memory of fp64 and several times faster on CPUs (fp64 has no fast GEMM there);
            # the inverses that need the precision are taken in fp64 from this sum (surgeon.damped_inverse)
            xf = x.float()
            if self.cov is None:
                self.cov = xf.T @ xf
            else:
                self.cov.addmm_(xf.T, xf)

    @property
    def norm(self) -> torch.Tensor:  # ||X_j||_2 over all calibration tokens (Wanda)
        assert self.sumsq is not None, "no activations recorded"
        return self.sumsq.sqrt().float()

    @property
    def var(self) -> torch.Tensor:  # per-feature variance over tokens (FLAP's fluctuation)
        assert self.sum is not None and self.sumsq is not None, "no activations recorded"
        mean = self.sum / self.n
        return (self.sumsq / self.n - mean * mean).clamp_min(0).float()

    @property
    def A(self) -> torch.Tensor:  # E[x x^T]
        assert self.cov is not None, "no covariance recorded (with_cov was off)"
        return (self.cov / self.n).float()

    def A_inv(self, damp: float = 0.01) -> torch.Tensor:
        """damped_inverse(A) in fp64 without an fp32 copy of A: (S/n + d/n I)^-1 = n (S + d I)^-1 for the
        sum S (at a 14,336-wide MLP input that copy is 0.8 GB of the sequential path's peak). With
        `keep_cov` off the sum is freed once copied to fp64 (0.8 GB more): the inverse is its last use."""
        from slimdeploy.score.surgeon import damped_inverse

        # the fp64 copy goes to damped_inverse as a temporary: no name here keeps it alive beside the factor
        return damped_inverse(self._fp64_sum(), damp, overwrite=True).mul_(self.n)

    def _fp64_sum(self) -> torch.Tensor:
        assert self.cov is not None, "no covariance recorded (with_cov was off, or it was freed by A_inv)"
        out = self.cov.double()
        if not self.keep_cov:
            self.cov = None
        return out


@dataclass
class LayerStats:
    inputs: dict[str, InputStats] = field(default_factory=dict)
    out_grads: dict[str, InputStats] = field(default_factory=dict)  # G = E[g g^T] in .cov
    weight_grads: dict[str, torch.Tensor] = field(default_factory=dict)
    block_influence: float = 0.0


# projections that read the same tensor as another one: their input covariance is shared, not recomputed
SAME_INPUT = {"k": "q", "v": "q", "up": "gate"}


class _Stop(Exception):
    pass


def catch_layer0_inputs(model, batches: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    """Run the model up to decoder layer 0 and keep its inputs and call kwargs (rotary, masks); the
    decoder layers themselves never run, so they may still be on the meta device (sequential pruning)."""
    caught: list[torch.Tensor] = []
    kwargs_box: dict = {}

    def hook(module, args, kwargs):
        caught.append((args[0] if args else kwargs["hidden_states"]).detach())
        kwargs_box.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _Stop

    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for row in batches:
            try:
                model(input_ids=row[None], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    kwargs_box.pop("past_key_values", None)
    kwargs_box.pop("past_key_value", None)
    return caught, kwargs_box


@torch.no_grad()
def layer_input_stats(layer, hidden: list[torch.Tensor], kwargs: dict, with_cov: bool = False) -> LayerStats:
    """Run every sample's activations through `layer`, replacing `hidden[j]` by the layer's output, and
    return the input statistics of its seven projections and its block influence."""
    stats = LayerStats()
    handles = []
    for name, lin in linears(layer).items():
        if name in SAME_INPUT:  # k/v read q's input, up reads gate's: the same numbers, gathered once
            continue
        stats.inputs[name] = InputStats()
        handles.append(lin.register_forward_hook(lambda m, a, o, s=stats.inputs[name]: s.add(a[0], with_cov)))
    for name, source in SAME_INPUT.items():
        stats.inputs[name] = stats.inputs[source]
    cos_sum, count = 0.0, 0
    try:
        for j, h in enumerate(hidden):
            res = layer(h, **kwargs)
            new = res[0] if isinstance(res, tuple) else res
            cos = torch.nn.functional.cosine_similarity(h.float(), new.float(), dim=-1)
            cos_sum += cos.sum().item()
            count += cos.numel()
            hidden[j] = new
    finally:
        for hd in handles:
            hd.remove()
    stats.block_influence = 1.0 - cos_sum / max(1, count)
    return stats


@torch.no_grad()
def layerwise_input_stats(model, batches: torch.Tensor, with_cov: bool = False, progress=None) -> list[LayerStats]:
    """Per decoder layer: input statistics of its seven projections and its block influence."""
    hidden, kwargs = catch_layer0_inputs(model, batches)
    out: list[LayerStats] = []
    layers = decoder_layers(model)
    for li, layer in enumerate(layers):
        out.append(layer_input_stats(layer, hidden, kwargs, with_cov))
        if progress:
            progress(li + 1, len(layers))
    return out


def gradient_stats(
    model, batches: torch.Tensor, kfac: bool = True, weight_grads: bool = False, progress=None
) -> list[LayerStats]:
    """Forward/backward of the LM loss over `batches` (one sample at a time, gradients accumulated)."""
    layers = decoder_layers(model)
    stats = [LayerStats() for _ in layers]
    handles = []
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for li, layer in enumerate(layers):
        for name, lin in linears(layer).items():
            if weight_grads:
                lin.weight.requires_grad_(True)
            if kfac:
                g = InputStats()
                stats[li].out_grads[name] = g
                handles.append(lin.register_full_backward_hook(lambda m, gi, go, s=g: s.add(go[0], True)))
                if name in SAME_INPUT:  # k/v read q's input, up reads gate's: one A serves them (same numbers)
                    continue
                a = InputStats()
                stats[li].inputs[name] = a
                handles.append(lin.register_forward_hook(lambda m, i, o, s=a: s.add(i[0], True)))
        if kfac:
            for name, source in SAME_INPUT.items():
                if source in stats[li].inputs:
                    stats[li].inputs[name] = stats[li].inputs[source]
    # with every weight frozen, make the embeddings' output require grad so activations' grads still flow
    emb = model.get_input_embeddings()
    handles.append(emb.register_forward_hook(lambda m, i, o: o.requires_grad_(True)))
    try:
        for j, row in enumerate(batches):
            ids = row[None]
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            if progress:
                progress(j + 1, len(batches))
        if weight_grads:
            for li, layer in enumerate(layers):
                for name, lin in linears(layer).items():
                    stats[li].weight_grads[name] = lin.weight.grad.detach().clone() / len(batches)
                    lin.weight.grad = None
    finally:
        for hd in handles:
            hd.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
    return stats
