"""merge(): fold LoRA adapters into dense weights, and prove it changed nothing. Only that: groups masked
while training (loraprune/lorashear) are already zero in the weights, and the runner slices them away.

Checks: merged logits equal the adapter model's within `atol` (fp32 default 1e-4, relative to the logit
scale) on probe inputs, and no weight is NaN/Inf. The result is a plain transformers model.
"""

from __future__ import annotations

import torch

from slimdeploy.errors import SlimdeployError


@torch.no_grad()
def merge(peft_model, probe: torch.Tensor, atol: float = 1e-4) -> tuple[object, dict]:
    """Merge and unload; returns (dense model, parity report). Raises on mismatch or non-finite weights."""
    peft_model.eval()
    probe = probe.to(next(peft_model.parameters()).device)
    before = peft_model(input_ids=probe, use_cache=False).logits.float()
    model = peft_model.merge_and_unload()
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise SlimdeployError(f"NaN/Inf after merge in {bad[:3]}; the adapters diverged, lower the learning rate")
    after = model(input_ids=probe, use_cache=False).logits.float()
    diff = (after - before).abs().max().item()
    scale = before.abs().max().item()
    report = {
        "max_abs_diff": diff,
        "logit_scale": scale,
        "atol": atol,
        "probe_tokens": int(probe.numel()),
    }
    if diff > atol * max(1.0, scale):
        raise SlimdeployError(f"merged model differs from the adapter model by {diff:.3g} (> {atol} x {scale:.3g})")
    if any("lora_" in n for n, _ in model.named_modules()):
        raise SlimdeployError("adapter modules remain after merge")
    return model, report
