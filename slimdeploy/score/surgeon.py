"""The LLM Surgeon (van der Ouderaa et al. 2024): Kronecker-factored curvature, structured OBS costs and
the correlated weight update. Pure tensor functions.

The Fisher of a linear layer's weight W (d_out x d_in) is approximated as F = G (x) A, A = E[x x^T] over
inputs, G = E[g g^T] over output gradients of the LM loss (empirical Fisher). Removing a set of rows R or
columns C of W and re-optimising the rest under this quadratic model costs

    rows R:    dL = 1/2 tr( [G^-1]_RR^-1  W_R A W_R^T )
    columns C: dL = 1/2 tr( [A^-1]_CC^-1  W_C^T G W_C )

with the optimal update of the remaining weights

    rows R:    dW = -[G^-1]_:R [G^-1]_RR^-1 W_R:
    columns C: dW = -W_:C [A^-1]_CC^-1 [A^-1]_C:

Multi-shot pruning (several smaller steps, curvature re-estimated after each) is done by the caller.
"""

from __future__ import annotations

import torch


def damped_inverse(M: torch.Tensor, damp: float = 0.01, overwrite: bool = False) -> torch.Tensor:
    """(M + damp * mean(diag M) I)^-1 in float64: calibration covariances are often rank-deficient.

    Through a Cholesky factor, in place on one fp64 copy (`overwrite`: on M itself when it is fp64, which the
    caller then must not hold: pass it as a temporary): two n x n fp64 buffers at the peak instead of five
    (an identity, a sum, LU workspace): 3.3 GB rather than 8 GB for a 14,336-wide MLP (Llama-3.1-8B)."""
    Md = M.double()
    if Md.data_ptr() == M.data_ptr() and not overwrite:
        Md = Md.clone()  # never modify the caller's tensor unless asked
    del M  # with `overwrite` Md may be M: once the factor exists, nothing here may keep it alive
    lam = damp * Md.diagonal().mean().clamp_min(1e-12)
    Md.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(Md)
    if int(info) != 0:  # not positive definite in floating point: the general inverse
        return torch.linalg.inv(Md)
    del Md
    return torch.cholesky_inverse(L)


def _sub_inverses(inv: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """[inv]_BB^-1 for each block B: (n_blocks, b, b)."""
    sub = inv[blocks[:, :, None], blocks[:, None, :]]
    return torch.linalg.inv(sub)


CHUNK = 1 << 23  # fp64 elements of one chunk of blocks' temporaries (64 MB), whatever the layer's width


def _chunks(blocks: torch.Tensor, per_block: int):
    step = max(1, CHUNK // max(1, per_block))
    for i in range(0, blocks.shape[0], step):
        yield blocks[i : i + step]


def column_costs(W: torch.Tensor, A_inv: torch.Tensor, G: torch.Tensor | None, blocks: torch.Tensor) -> torch.Tensor:
    """OBS cost of removing each block of columns of W on its own: (n_blocks,). G None: the identity (the
    layer-wise reconstruction loss ||W X - W' X||^2 of SparseGPT/ZipLM, no gradients needed). Blocks are
    taken a chunk at a time: no fp64 copy of W (0.5 GB at an 8B MLP)."""
    Gd = None if G is None else G.double()
    out = []
    for bl in _chunks(blocks, W.shape[0] * blocks.shape[1]):
        M = _sub_inverses(A_inv, bl)  # (n, b, b)
        WC = W[:, bl].double().permute(1, 0, 2)  # (n, d_out, b)
        GWC = WC if Gd is None else Gd @ WC
        out.append(0.5 * (GWC * (WC @ M)).sum((1, 2)))
    return torch.cat(out)


def row_costs(W: torch.Tensor, A: torch.Tensor, G_inv: torch.Tensor | None, blocks: torch.Tensor) -> torch.Tensor:
    """OBS cost of removing each block of rows of W on its own: (n_blocks,). G_inv None: the identity."""
    Ad = A.double()
    out = []
    for bl in _chunks(blocks, W.shape[1] * blocks.shape[1]):
        WR = W[bl].double()  # (n, b, d_in)
        MWR = WR if G_inv is None else _sub_inverses(G_inv, bl) @ WR  # [I]_BB^-1 = I
        out.append(0.5 * (MWR * (WR @ Ad)).sum((1, 2)))
    return torch.cat(out)


def remove_columns_update(W: torch.Tensor, A_inv: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """W after removing columns `removed` jointly with the correlated OBS update (removed columns become 0)."""
    if removed.numel() == 0:
        return W
    M = torch.linalg.inv(A_inv[removed][:, removed])
    P = W[:, removed].double() @ M  # (d_out, |removed|)
    new = torch.empty_like(W)
    # a block of columns at a time: no fp64 copy of W or of A_inv's removed rows (1.3 GB at an 8B MLP)
    step = max(1, CHUNK // max(1, W.shape[0] + removed.numel()))
    for i in range(0, W.shape[1], step):
        new[:, i : i + step] = (W[:, i : i + step].double() - P @ A_inv[removed, i : i + step]).to(W.dtype)
    new[:, removed] = 0
    return new


def remove_rows_update(W: torch.Tensor, G_inv: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """W after removing rows `removed` jointly with the correlated OBS update (removed rows become 0)."""
    if removed.numel() == 0:
        return W
    Wd = W.double()
    M = torch.linalg.inv(G_inv[removed][:, removed])
    new = Wd - G_inv[:, removed] @ M @ Wd[removed]
    new[removed] = 0
    return new.to(W.dtype)
