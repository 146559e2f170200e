"""What a quantized checkpoint needs from its runtime, and a torch simulation to verify the runtime against.

vLLM on CPU has int8 kernels (W8A8: `CPUInt8ScaledMMLinearKernel`, oneDNN) on every x86 host, but its W4A16
kernel (`cpu_gemm_wna16`) only on AVX-512 hosts and only with bf16 activations; on AVX2-only hosts a W4A16
model loads and then crashes at the first forward (vLLM issue #55613). CUDA builds have both.

Quantized tokens need not equal fp32 tokens, so a runtime is checked against a torch simulation of the same
scheme: the checkpoint as transformers runs it through compressed-tensors, i.e. the dequantized weights and,
for W8A8, activations quantized per token to int8 at run time (symmetric, max|x| / 127.5; vLLM's kernel divides
by 127, a difference the floor absorbs; tests/test_quantize.py checks the simulation against one written
independently). The measure is teacher-forced top-1 agreement: the simulation, fed the runtime's own greedy
tokens, predicts the same next token at every position; `AGREEMENT_FLOOR` of the positions must agree.
"""

from __future__ import annotations

import torch

from slimdeploy.errors import SlimdeployError

AGREEMENT_FLOOR = 0.95


def scheme_of(config: dict) -> dict | None:
    """{"weight_bits", "group_size", "activations"} of a compressed-tensors config.json; None if unquantized."""
    qc = config.get("quantization_config")
    if not qc:
        return None
    if qc.get("quant_method") != "compressed-tensors":
        raise SlimdeployError(
            f"quantization {qc.get('quant_method')!r} is not one slimdeploy writes or verifies (compressed-tensors)"
        )
    group: dict = next(iter((qc.get("config_groups") or {}).values()), {})
    weights, acts = group.get("weights") or {}, group.get("input_activations")
    return {
        "weight_bits": weights.get("num_bits"),
        "group_size": weights.get("group_size"),
        "activations": f"int{acts['num_bits']} per {acts.get('strategy')}" if acts else None,
    }


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def check_served(config: dict, on_cuda: bool) -> str | None:
    """Refuse what vLLM cannot run here; returns the dtype vLLM must serve the checkpoint in (None: any)."""
    return check_scheme_served(scheme_of(config), on_cuda)


def check_scheme_served(scheme: dict | None, on_cuda: bool) -> str | None:
    if scheme is None or scheme["activations"]:  # unquantized, or W8A8: int8 kernels on every x86 host
        return None
    if on_cuda:
        return None
    if cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"):
        raise SlimdeployError(
            f"vLLM has no W{scheme['weight_bits']}A16 kernel on this CPU ({cpu_capability()}: its cpu_gemm_wna16 "
            "needs AVX-512); quantize with --scheme w8a8, which vLLM serves on every x86 host, or serve on an "
            "AVX-512 host or a GPU"
        )
    return "bfloat16"  # the CPU W4A16 kernel runs bf16 activations only
