"""PruneConfig: what to remove and how to choose it (pydantic only: validating a recipe imports no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimdeploy.score.registry import criterion_names

Structure = Literal["mlp", "head", "kv", "layer"]
DEFAULT_STRUCTURES: tuple[Structure, ...] = ("mlp", "head")


class PruneConfig(BaseModel):
    """What to remove and how to choose it. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(0.2, gt=0, lt=1, description="fraction of all parameters removed")
    criterion: str = Field("surgeon", description=f"one of {', '.join(criterion_names())} (or a registered one)")
    allocation: Literal["uniform", "global"] = "uniform"
    structures: list[Structure] = Field(default_factory=lambda: list(DEFAULT_STRUCTURES))
    round_to: int = Field(64, ge=1, description="kept MLP widths are multiples of this")
    tp_size: int = Field(1, ge=1, description="keep head and channel counts divisible for tensor parallel")
    attn_share: float | None = Field(None, ge=0, le=1, description="share of the removal taken from attention")
    layer_share: float | None = Field(None, ge=0, le=1, description="share taken by dropping whole layers")
    protect_first: int = Field(0, ge=0)
    protect_last: int = Field(0, ge=0)
    shots: int = Field(1, ge=1, le=16, description="multi-shot: prune in steps, re-scoring after each")
    update: Literal["auto", "none", "cols", "both"] = Field(
        "auto", description="Surgeon OBS update: consumer columns, also producer rows, or none (auto: cols)"
    )
    reconstruct: Literal["none", "ridge", "block"] = Field(
        "none",
        description="after slicing, refit each layer to the dense one on calibration data: ridge (o/down in closed "
        "form) or block (ridge, then Adam steps on the whole layer)",
    )
    reconstruct_target: Literal["local", "stream"] = Field(
        "local", description="local: the dense layer on the pruned inputs; stream: the dense model's own stream"
    )
    reconstruct_steps: int = Field(32, ge=1, description="Adam steps per layer for reconstruct: block")
    reconstruct_lr: float = Field(1e-4, gt=0)
    data: str | None = Field(None, description="calibration text (.txt/.jsonl/hf:); default: demo corpus")
    n_samples: int = Field(32, ge=1)
    seq_len: int = Field(256, ge=8)
    seed: int = 0

    @field_validator("criterion")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in criterion_names():
            raise ValueError(f"unknown criterion {v!r}; choose one of {', '.join(criterion_names())}")
        return v

    @model_validator(mode="after")
    def _reconstructible(self) -> PruneConfig:
        if self.reconstruct != "none" and "layer" in self.structures:
            raise ValueError(
                "reconstruct fits each pruned layer to its dense counterpart, which layer dropping removes; "
                "drop 'layer' from structures or set reconstruct: none"
            )
        return self

    @field_validator("structures")
    @classmethod
    def _nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("structures must name at least one of mlp, head, kv, layer")
        return list(dict.fromkeys(v))
