"""QuantizeConfig: what to quantize and how; rejects unknown keys and combinations no format carries."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# scheme -> (weight bits, default group size (None: one scale per output channel), activations, format)
SCHEMES: dict[str, tuple[int, int | None, str, str]] = {
    "w8a8": (8, None, "int8 per token, dynamic", "int-quantized"),
    "w4a16": (4, 128, "kept in the model's dtype", "pack-quantized"),
}


class QuantizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheme: Literal["w8a8", "w4a16"] = "w8a8"
    method: Literal["rtn", "gptq"] = "gptq"
    group_size: int | None = Field(None, ge=16, description="w4a16: 128 (default) or 64; w8a8: per channel")
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"], description="module names kept unquantized")
    damp: float = Field(0.01, gt=0, lt=1, description="GPTQ: fraction of the mean Hessian diagonal added")
    actorder: bool = Field(False, description="GPTQ: columns by decreasing activation energy (per-channel only)")
    data: str | None = None
    n_samples: int = Field(32, ge=1)
    seq_len: int = Field(256, ge=8)
    seed: int = 0

    @property
    def bits(self) -> int:
        return SCHEMES[self.scheme][0]

    @property
    def groups(self) -> int | None:
        """The group size in force (the scheme's default when none is given)."""
        return self.group_size if self.group_size is not None else SCHEMES[self.scheme][1]

    @property
    def format(self) -> str:
        return SCHEMES[self.scheme][3]

    @model_validator(mode="after")
    def _consistent(self):
        if self.scheme == "w8a8" and self.group_size is not None:
            raise ValueError("w8a8 has one scale per output channel (vLLM's int8 kernels); drop group_size")
        if self.actorder and self.groups is not None:
            raise ValueError("actorder needs per-channel scales; use it with w8a8, or drop it for w4a16")
        if self.actorder and self.method != "gptq":
            raise ValueError("actorder is a GPTQ setting; use method gptq")
        return self
