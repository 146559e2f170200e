"""Devices and dtypes by name, checked before any weight loads (`--device`, `--dtype`).

One code path for every device: stages move their inputs to the model's device and never branch on CUDA;
what only a GPU can do is refused here, in one line, on a machine without one.
"""

from __future__ import annotations

import re

from slimdeploy.errors import SlimdeployError

DTYPES = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = "auto (CUDA when available) | cpu | cuda | cuda:N"


def resolve_device(spec: str | None, what: str = "--device") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda[:N]' only when that GPU exists. `what` names
    the setting in the error (a flag, or a recipe key such as recover.teacher_device)."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not m:
        raise SlimdeployError(f"unknown device {spec!r}: use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise SlimdeployError(f"{what} {spec}: no CUDA device here (torch {torch.__version__}); use cpu")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise SlimdeployError(f"{what} {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    return spec


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise SlimdeployError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return name


def missing_kernel(exc: BaseException) -> str | None:
    """A one-line explanation when torch has no kernel for an op in this dtype on this device, else None."""
    m = re.search(r'"?(\w+)"? not implemented for \'(Half|BFloat16)\'', str(exc))
    if not m:
        return None
    dtype = {"Half": "fp16", "BFloat16": "bf16"}[m.group(2)]
    return f"torch has no {dtype} kernel for {m.group(1)} on this device; use --dtype fp32 (or bf16 on CPU)"


def native_bf16(device: str) -> bool:
    """Whether `device` computes in bf16 natively, so bf16 autocast is faster than fp32: a CUDA GPU that
    supports it, or a CPU with AMX or AVX512-BF16. Elsewhere bf16 is emulated: measured on an AVX2-only AMD
    EPYC, a bf16 matmul ran 12x slower than fp32 and LoRA recovery under bf16 autocast at 5 tokens/s."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = torch.cpu  # private probes (torch >= 2.3); without them assume emulation: fp32 is never slow
    probes = [getattr(cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(p is not None and p() for p in probes)


def resolve_bf16(setting: bool | str, device: str) -> bool:
    """A bf16 setting: true / false as given, 'auto' where the device computes bf16 natively."""
    return native_bf16(device) if setting == "auto" else bool(setting)
