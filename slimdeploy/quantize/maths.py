"""Weight quantization as pure tensor functions: symmetric integer grids, round-to-nearest, and GPTQ.

Grid (the compressed-tensors convention vLLM reads): per output channel (`group_size` None) or per group of
`group_size` input columns, scale = max|w| / ((2^bits - 1) / 2), codes q = clamp(round(w / scale),
-2^(bits-1), 2^(bits-1) - 1), value = q * scale (zero point 0).

GPTQ (Frantar et al. 2023) quantizes one input column at a time and spreads each column's rounding error over
the columns not yet quantized, weighted by the inverse Hessian of the layer's squared output error,
H = E[x x^T] of the layer's inputs: the K-FAC A factor the surgeon and wanda hooks already gather. Columns are
processed in blocks (the "lazy batch" update); `actorder` takes them in order of decreasing H_jj (only with
per-channel scales: with groups it would need a column-to-group index the checkpoint would have to carry).
"""

from __future__ import annotations

import torch


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def symmetric_scale(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """(out, n_groups) scales of `w` (out, in); n_groups = 1 per channel. Zero groups get scale 1."""
    g = _grouped(w, group_size)
    amax = g.abs().amax(-1)
    scale = amax / ((2**bits - 1) / 2)
    return torch.where(scale > 0, scale, torch.ones_like(scale)).float()


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    if group_size is None:
        return w.float()[:, None, :]
    if w.shape[1] % group_size:
        raise ValueError(f"{w.shape[1]} input columns are not a multiple of group_size {group_size}")
    return w.float().reshape(w.shape[0], w.shape[1] // group_size, group_size)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """Integer codes of `w` on the grid of `scale` (int8 tensor, values in the `bits` range)."""
    g = _grouped(w, group_size)
    q = torch.round(g / scale[..., None]).clamp(-qmax(bits) - 1, qmax(bits))
    return q.reshape(w.shape).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, group_size: int | None) -> torch.Tensor:
    g = _grouped(q.float(), group_size)
    return (g * scale[..., None]).reshape(q.shape)


def rtn(w: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round to nearest: (dequantized weight in fp32, scales)."""
    scale = symmetric_scale(w, bits, group_size)
    return dequantize(quantize_codes(w, scale, bits, group_size), scale, group_size), scale


def _quantize_column(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.round(w / scale).clamp(-qmax(bits) - 1, qmax(bits)) * scale


def gptq(
    w: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int | None,
    damp: float = 0.01,
    block: int = 128,
    actorder: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantized weight in fp32 on the grid of the returned scales, scales (out, n_groups)).

    `hessian`: E[x x^T] of the layer's inputs (in, in). `damp`: fraction of the mean diagonal added to it."""
    if actorder and group_size is not None:
        raise ValueError("actorder needs per-channel scales (group_size None)")
    if group_size is not None and block % group_size:
        block = group_size * max(1, block // group_size)
    W = w.detach().double().clone()
    H = hessian.detach().double().clone()
    n = W.shape[1]
    dead = torch.diag(H) == 0  # inputs that were always zero: their weights meet nothing
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if actorder else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.diag(H).mean() * torch.eye(n, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    # per-channel scales come from the whole (original) row, as RTN's; group scales when the group starts
    channel_scale = symmetric_scale(W, bits, None).double()  # used when group_size is None
    group_scales: list[torch.Tensor] = []
    Q = torch.zeros_like(W)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if group_size is not None and col % group_size == 0:
                group_scales.append(symmetric_scale(W1[:, i : i + group_size], bits, None).double())
            scale = (channel_scale if group_size is None else group_scales[-1])[:, 0]
            q = _quantize_column(W1[:, i], scale, bits)
            Q[:, col] = q
            err = (W1[:, i] - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    final = channel_scale if group_size is None else torch.cat(group_scales, dim=1)
    return Q.float(), final.float()


def output_error(w: torch.Tensor, w_q: torch.Tensor, hessian: torch.Tensor) -> float:
    """E||x (w - w_q)^T||^2 over the inputs whose second moment is `hessian`: tr(D H D^T), D = w - w_q."""
    d = w.double() - w_q.double()
    return float(torch.einsum("oi,ij,oj->", d, hessian.double(), d))
