"""LoRAPrune's criterion (Zhang et al. 2023): importance from LoRA weights and gradients only.

LoRA adapters on the seven projections with the base weights frozen, so backward computes no full-weight
gradient (that is where LoRAPrune saves memory against Taylor). Per batch:
    G_est = gB A + B gA - gB gA,  E = |G_est * (W + s B A)|
and E is smoothed with an exponential moving average over batches. When the adapters are fresh (B = 0)
the estimate reduces to gB A, a random rank-r sketch of the full gradient; during recovery (B != 0) it
sharpens, which is why the iterative mode of the recovery stage re-scores while LoRA trains.
"""

from __future__ import annotations

import math

import torch

from slimdeploy.analyze.adapters import decoder_layers, linears
from slimdeploy.score.criteria import fresh_lora_sums, loraprune_map, row_col_sums

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_factors(lin) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, scaling) of a PEFT LoRA layer's default adapter."""
    name = next(iter(lin.lora_A.keys()))
    return lin.lora_A[name].weight, lin.lora_B[name].weight, lin.scaling[name]


def accumulate_lora_importance(peft_layers: list[dict], ema: list[dict], beta: float) -> None:
    """One moving-average step of E's row and column sums for every adapted projection (after backward).
    E is formed for one projection at a time and reduced at once, so the criterion never holds a weight-sized
    tensor per projection (full-weight Taylor holds one gradient per weight)."""
    for li, lins in enumerate(peft_layers):
        for name, lin in lins.items():
            A, B, s = lora_factors(lin)
            if A.grad is None or B.grad is None:
                continue
            E = loraprune_map(
                lin.base_layer.weight.detach().float(),
                A.detach().float(),
                B.detach().float(),
                A.grad.float(),
                B.grad.float(),
                s,
            )
            rc = row_col_sums(E)  # keep only row/column sums: memory O(d_out + d_in), not O(d_out * d_in)
            old = ema[li].get(name)
            ema[li][name] = rc if old is None else tuple(beta * o + (1 - beta) * n for o, n in zip(old, rc))


def fresh_lora_A(d_in: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """PEFT's default init of lora_A (kaiming-uniform with a = sqrt(5): U(-1/sqrt(d_in), 1/sqrt(d_in)))."""
    bound = 1.0 / math.sqrt(d_in)
    return (torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound


def loraprune_maps(
    model, batches: torch.Tensor, rank: int = 8, beta: float = 0.9, seed: int = 0, progress=None
) -> list[dict]:
    """Per layer and projection: (row sums, column sums) of the importance map of fresh LoRA adapters.

    With fresh adapters (B = 0) the only non-zero LoRA gradient is gB = s * sum_t g_t (A x_t)^T, so
    G_est = gB A. It is computed from hooks on the frozen model instead of PEFT modules: a forward hook keeps
    the rank-r projection u = x A^T, a backward hook forms gB from the output gradient. Nothing weight-sized
    is kept across layers and autograd stores no linear inputs (every weight is frozen): this is the memory
    LoRAPrune saves against full-weight Taylor (benchmarks/criterion_memory.py). Same result as PEFT adapters
    with the same A (tests/test_prune_api.py).
    """
    gen = torch.Generator().manual_seed(seed)
    scaling = 2.0  # lora_alpha = 2 * rank, as in recovery
    layers = [linears(layer) for layer in decoder_layers(model)]
    ema: list[dict] = [{} for _ in layers]
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    handles: list = []
    proj: dict = {}
    for li, lins in enumerate(layers):
        for name, lin in lins.items():
            A = fresh_lora_A(lin.in_features, rank, gen)
            handles.append(
                lin.register_forward_hook(lambda m, i, o, k=(li, name), A=A: proj.__setitem__(k, i[0].detach() @ A.T))
            )
            handles.append(
                lin.register_full_backward_hook(
                    lambda m, gi, go, k=(li, name), A=A: _update(ema, k, m.weight, A, go[0], proj.pop(k), scaling, beta)
                )
            )
    # every weight is frozen: make the embeddings' output require grad so that backward reaches the hooks
    emb = model.get_input_embeddings()
    handles.append(emb.register_forward_hook(lambda m, i, o: o.requires_grad_(True)))
    try:
        for j, row in enumerate(batches):
            ids = row[None]
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            if progress:
                progress(j + 1, len(batches))
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
    return ema


def _update(ema, key, W, A, grad_out, u, scaling: float, beta: float) -> None:
    """One moving-average step of E = |gB A * W| for one projection (B = 0: the other LoRA terms vanish)."""
    li, name = key
    g = grad_out.reshape(-1, grad_out.shape[-1]).float()
    gB = scaling * g.T @ u.reshape(-1, u.shape[-1]).float()
    rc = fresh_lora_sums(W.detach().float(), A, gB)
    old = ema[li].get(name)
    ema[li][name] = rc if old is None else tuple(beta * o + (1 - beta) * n for o, n in zip(old, rc))
