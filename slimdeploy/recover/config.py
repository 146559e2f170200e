"""RecoverConfig: LoRA recovery settings (typed; unknown keys rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimdeploy.prune.config import PruneConfig

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n{output}"
)


class RecoverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: list(ALL_LINEAR))
    lr: float = Field(1e-3, gt=0, description="peak learning rate (must be > 0)")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: int = Field(10, ge=0)
    steps: int | None = Field(200, ge=1, description="optimizer steps (or give tokens)")
    tokens: int | None = Field(None, ge=1, description="token budget; overrides steps")
    batch_size: int = Field(8, ge=1)
    seq_len: int = Field(256, ge=8)
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    gradient_checkpointing: bool = False
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="bf16 autocast (master weights stay fp32); auto: where the device computes bf16 natively "
        "(CUDA, CPUs with AMX / AVX512-BF16), fp32 elsewhere, where emulated bf16 is many times slower",
    )
    kd_weight: float = Field(0.0, ge=0, le=1, description="0: LM loss only; 1: only KL to the unpruned teacher")
    kd_temperature: float = Field(1.0, gt=0)
    teacher_dtype: Literal["fp32", "bf16", "fp16", "auto-bf16"] = Field(
        "fp32",
        description="dtype the unpruned teacher loads in: bf16 halves its memory (it only runs forward); "
        "auto-bf16: bf16 where the device computes it natively, else fp32",
    )
    teacher_device: str = Field(
        "same",
        pattern=r"^(same|cpu|cuda(:\d+)?)$",
        description="where the teacher runs: same (as the student), cpu, cuda[:N]",
    )
    teacher_topk: int = Field(
        0,
        ge=0,
        description="0: the teacher runs beside the student; k > 0: its top-k logits for every batch are computed "
        "once before training, cached in the work folder (8 bytes x k per token) and the teacher is freed",
    )
    data: str | list[str] | None = Field(
        None, description=".txt/.jsonl/alpaca .json/hf: (a list mixes sources); default: demo train split"
    )
    prompt_template: str = ALPACA_TEMPLATE
    chat_template: Literal["auto", "off"] = Field(
        "auto",
        description="instruction data: auto uses the model's chat template when it has one, else prompt_template",
    )
    eval_every: int = Field(0, ge=0, description="held-out loss every N steps (0: never)")
    ckpt_every: int = Field(50, ge=1)
    seed: int = 0
    mode: Literal["oneshot", "loraprune", "lorashear"] = Field(
        "oneshot",
        description="oneshot: recover an already pruned model; loraprune: iterative masks from LoRA "
        "gradients on a cubic schedule; lorashear: progressive periods with LoRA merged after each",
    )
    prune: PruneConfig | None = Field(None, description="what to remove while training (loraprune/lorashear)")
    update_every: int = Field(10, ge=1, description="loraprune: steps between mask updates")
    prune_fraction: float = Field(0.7, gt=0, le=1, description="loraprune/lorashear: share of steps that prune")
    periods: int = Field(3, ge=1, description="lorashear: number of progressive periods")

    @model_validator(mode="after")
    def _budget(self) -> RecoverConfig:
        if self.steps is None and self.tokens is None:
            raise ValueError("give steps or tokens")
        if self.mode != "oneshot" and self.prune is None:
            raise ValueError(f"mode {self.mode} needs a `prune` block (ratio, structures, ...)")
        if self.mode == "oneshot" and self.prune is not None:
            raise ValueError("a `prune` block needs mode loraprune or lorashear")
        if self.teacher_topk and self.mode != "oneshot":  # lorashear's data adaptor changes the batches as it trains
            raise ValueError("teacher_topk needs mode oneshot (its batches are known before training)")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum

    @property
    def total_steps(self) -> int:
        if self.tokens is not None:
            return max(1, -(-self.tokens // self.tokens_per_step))
        return int(self.steps)
