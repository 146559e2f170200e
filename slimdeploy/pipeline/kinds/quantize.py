"""The quantize stage kind: post-training weight quantization into a compressed-tensors checkpoint."""

from __future__ import annotations

from typing import Any

from slimdeploy.errors import SlimdeployError
from slimdeploy.pipeline.kinds.base import PlanFacts, StageKind, register
from slimdeploy.pipeline.state import PipelineState, StageContext, StageResult
from slimdeploy.recipe.schema import QuantizeStage
from slimdeploy.utils.fs import fresh_dir


@register
class Quantize(StageKind):
    name = "quantize"
    scratch = ("quantized",)
    config = QuantizeStage
    changes_weights = True

    def run(self, state: PipelineState, cfg: QuantizeStage, ctx: StageContext) -> StageResult:
        """Quantize, write the checkpoint, and continue with it as transformers runs it (dequantized weights,
        W8A8's per-token int8 activations): later evals measure the quantized model, exports and benches
        serve its files."""
        import shutil

        from slimdeploy.load.data import calibration_data
        from slimdeploy.load.model import load_model
        from slimdeploy.quantize.apply import quantize_model, write_checkpoint

        batches = None
        if cfg.method == "gptq":
            batches, _ = calibration_data(state.tokenizer, cfg.data, cfg.n_samples, cfg.seq_len, cfg.seed)
        scales, details = quantize_model(state.model, cfg, batches, ctx.progress)
        dest = fresh_dir(ctx.work / "quantized")
        write_checkpoint(state.model, scales, cfg, dest)
        state.model = load_model(str(dest), ctx.recipe.dtype, with_tokenizer=False, device=ctx.device).model
        details["weight_file_bytes"] = sum(f.stat().st_size for f in dest.glob("*.safetensors"))
        details["scheme"] = {"weights": f"int{cfg.bits}", "group_size": cfg.groups, "format": cfg.format}
        shutil.rmtree(dest)
        state.quantized = cfg.scheme
        return StageResult("quantize", details)

    def check_data(self, cfg: QuantizeStage, recipe: Any, tokenizer: Any) -> None:
        if cfg.method == "gptq" and cfg.data is not None:
            from slimdeploy.load.data import load_texts

            load_texts(cfg.data, split="calibration")

    def check(self, i: int, cfg: QuantizeStage, facts: PlanFacts) -> None:
        if facts.per_layer:
            raise SlimdeployError(
                f"stages[{i}] (quantize): per-layer widths (allocation global) are not quantized yet; "
                "prune with allocation uniform before quantizing"
            )
        facts.quantized = cfg


def check_served_after_quantize(where: str, quantized: QuantizeStage) -> None:
    """Is there a kernel for the quantized scheme on this machine (vLLM)? One line naming `where`."""
    from slimdeploy.quantize.serving import check_scheme_served
    from slimdeploy.utils.device import resolve_device

    scheme = {"weight_bits": quantized.bits, "activations": "int8" if quantized.scheme == "w8a8" else None}
    try:
        check_scheme_served(scheme, resolve_device("auto").startswith("cuda"))
    except SlimdeployError as exc:
        raise SlimdeployError(f"{where}: {exc}") from None
