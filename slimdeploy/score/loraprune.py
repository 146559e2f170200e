"""LoRAPrune's criterion (Zhang et al. 2023): importance from LoRA weights and gradients only.

PEFT LoRA adapters are attached to the seven projections with the base weights frozen, so backward computes
no full-weight gradient (that is where LoRAPrune saves memory against Taylor). Per batch:
    G_est = gB A + B gA - gB gA,  E = |G_est * (W + s B A)|
and E is smoothed with an exponential moving average over batches. When the adapters are fresh (B = 0)
the estimate reduces to gB A, a random rank-r sketch of the full gradient; during recovery (B != 0) it
sharpens, which is why the iterative mode of the recovery stage re-scores while LoRA trains.
"""

from __future__ import annotations

import torch

from slimdeploy.analyze.adapters import decoder_layers, linears
from slimdeploy.score.criteria import loraprune_map, row_col_sums

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


def loraprune_maps(
    model, batches: torch.Tensor, rank: int = 8, beta: float = 0.9, seed: int = 0, progress=None
) -> list[dict]:
    """Per layer and projection: (row sums, column sums) of the importance map, from fresh LoRA adapters."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, lora_dropout=0.0, bias="none")
    )
    try:
        base = peft_model.base_model.model
        layers = [linears(layer) for layer in decoder_layers(base)]
        ema: list[dict] = [{} for _ in layers]
        for j, row in enumerate(batches):
            ids = row[None]
            loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            accumulate_lora_importance(layers, ema, beta)
            peft_model.zero_grad(set_to_none=True)
            if progress:
                progress(j + 1, len(batches))
    finally:
        peft_model.unload()  # removes the adapters, leaving the original modules in `model`
    return ema
