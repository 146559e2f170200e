"""Importance criteria as pure tensor functions. Higher score = more important = kept.

Separable criteria give an element-wise importance map E (same shape as W); a group's score is the sum of
E over the rows/columns it owns in every projection (see analyze/groups.py):

- l1 / l2 (magnitude baselines):   E = |W|  /  E = W^2
- wanda (Wanda-sp, An et al. 2024): E = |W_ij| * ||X_j||_2, X the calibration inputs of the layer
- flap (An et al. 2024, fluctuation): consumer columns only, E_ij = W_ij^2 * Var(X_j): how much the
  output moves when input channel j is replaced by its mean; producer rows score 0
- taylor (LLM-Pruner, first order): E = |W * dL/dW| from full-weight gradients (the memory-heavy one)
- loraprune (Zhang et al. 2023): E = |G_est * (W + s*B@A)| with G_est = gB@A + B@gA - gB@gA, from LoRA
  gradients only; smoothed over batches by a moving average (see score/loraprune.py)

The LLM Surgeon's structured OBS costs are not separable and live in score/surgeon.py.
"""

from __future__ import annotations

import torch

from slimdeploy.analyze.groups import ROWS


def magnitude_map(W: torch.Tensor, p: int = 2) -> torch.Tensor:
    return W.abs() if p == 1 else W.pow(2)


def wanda_map(W: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
    return W.abs() * x_norm[None, :]


def flap_map(W: torch.Tensor, x_var: torch.Tensor, is_consumer: bool) -> torch.Tensor:
    return W.pow(2) * x_var[None, :] if is_consumer else torch.zeros_like(W)


def taylor_map(W: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return (W * grad).abs()


def lora_grad_estimate(A: torch.Tensor, B: torch.Tensor, gA: torch.Tensor, gB: torch.Tensor) -> torch.Tensor:
    """LoRAPrune's estimate of dL/d(BA) from the LoRA factors' gradients: gB A + B gA - gB gA."""
    return gB @ A + B @ gA - gB @ gA


def loraprune_map(
    W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, gA: torch.Tensor, gB: torch.Tensor, scaling: float
) -> torch.Tensor:
    return (lora_grad_estimate(A, B, gA, gB) * (W + scaling * (B @ A))).abs()


def fresh_lora_sums(W: torch.Tensor, A: torch.Tensor, gB: torch.Tensor, chunk: int = 1 << 18):
    """Row and column sums of |gB A * W| (LoRAPrune with B = 0), formed a few rows at a time: equal-sized
    small temporaries are reused by the allocator, while one weight-sized temporary per projection made the
    process grow by about a weight's worth (measured on Qwen2.5-0.5B shapes)."""
    step = max(1, chunk // W.shape[1])
    rows, cols = [], torch.zeros(W.shape[1], dtype=torch.float32)
    for s in range(0, W.shape[0], step):
        E = ((gB[s : s + step] @ A) * W[s : s + step]).abs()
        rows.append(E.sum(1))
        cols += E.sum(0)
    return torch.cat(rows), cols


def row_col_sums(E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An element map reduced to what group scores need: its row sums and column sums."""
    return E.sum(1), E.sum(0)


def block_sums(E: torch.Tensor | tuple, blocks: torch.Tensor, axis: int) -> torch.Tensor:
    """Sum an element map (or its (row sums, column sums)) over each block of rows (axis ROWS) or columns
    (axis COLS): (n_blocks,)."""
    rows, cols = E if isinstance(E, tuple) else row_col_sums(E)
    per_index = rows if axis == ROWS else cols
    return per_index[blocks].sum(-1)


def random_scores(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


CONSUMERS = ("o", "down")  # projections whose *input* channels are the groups (columns)
