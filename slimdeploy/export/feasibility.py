"""Can an export represent this model in its runtime? Answered from config.json alone, before any work.

The same check serves `slimdeploy export` (on the model's config) and the recipe preflight (on the source
config, with per-layer widths predicted from the recipe's prune allocation).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.registry import get_exporter

ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
PER_LAYER_FAMILIES = {"llama", "mistral", "qwen2"}  # what the DeciLM (nemotron-nas) format can carry
VLLM_CPU_MIN_HEAD_DIM = 32  # vLLM's CPU attention rejects smaller head sizes (8 seen failing)


def read_config(model_dir: Path) -> dict:
    """config.json of a model folder (as slimdeploy reads it: `logical_config`), or a one-line refusal."""
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.is_file():
        raise SlimdeployError(f"{model_dir} is not a model directory (no config.json); pass a model folder")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlimdeployError(f"{cfg_path} is not valid JSON ({exc}); re-export the model") from None
    if not isinstance(config, dict):
        raise SlimdeployError(f"{cfg_path} is not a JSON object; re-export the model")
    from slimdeploy.load.decilm_format import logical_config

    return logical_config(config)  # a per-layer output stored as DeciLM reads as its stock config + widths


def head_dim_of(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_exportable(
    config: dict, format: str, dtype: str = "fp32", verify: bool = True, per_layer: bool | None = None
) -> None:
    """Raise a one-line SlimdeployError if `format` cannot represent (or, with verify, run) the model."""
    exporter = get_exporter(format)
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise SlimdeployError(
            f"the {format} export cannot represent {arch} models (model_type {config.get('model_type')!r}); "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    if dtype not in exporter.dtypes:
        raise SlimdeployError(f"dtype {dtype!r} is not available for {format} exports: {', '.join(exporter.dtypes)}")
    per_layer = "slimdeploy_layer_widths" in config if per_layer is None else per_layer
    module, label = exporter.runtime
    if (verify or exporter.runtime_builds) and importlib.util.find_spec(module) is None:
        what = "builds the package" if exporter.runtime_builds else "verifies the export"
        raise SlimdeployError(
            f"{label} is not installed, and it {what}: pip install 'slimdeploy[cpu]' (or [gpu]), or --no-verify"
        )
    exporter.check(config, dtype, verify, per_layer)


def check_ort_genai(config: dict, dtype: str, verify: bool, per_layer: bool) -> None:
    if per_layer:
        raise SlimdeployError(
            "onnxruntime-genai's builder needs the same widths in every layer, and this model has per-layer "
            "widths (global allocation); prune with allocation uniform, or export vllm or onnx"
        )
    if dtype == "fp16" and verify and not _has_cuda():
        raise SlimdeployError("onnxruntime-genai fp16 packages do not run on the CPU provider; export fp32 or int4")


def check_onnx(config: dict, dtype: str, verify: bool, per_layer: bool) -> None:
    if dtype == "bf16" and verify and not _has_cuda():
        raise SlimdeployError("onnxruntime has no CPU kernels for every bf16 op here; export fp32 or fp16 on CPU")


def check_vllm(config: dict, dtype: str, verify: bool, per_layer: bool) -> None:
    if per_layer and config.get("model_type") not in PER_LAYER_FAMILIES:
        raise SlimdeployError(
            f"per-layer widths of {config.get('model_type')} models have no vLLM format (DeciLM carries "
            f"{', '.join(sorted(PER_LAYER_FAMILIES))}); prune with allocation uniform"
        )
    sliding = config.get("sliding_window")
    if per_layer and sliding and config.get("use_sliding_window", True):
        if sliding < config.get("max_position_embeddings", sliding + 1):
            raise SlimdeployError("the DeciLM format has no sliding-window attention; prune with allocation uniform")
    if verify:  # a quantized checkpoint: does vLLM have a kernel for its scheme on this machine?
        from slimdeploy.quantize.serving import check_served

        try:
            check_served(config, _has_cuda())
        except SlimdeployError as exc:
            raise SlimdeployError(f"{exc} (or export with --no-verify to serve it elsewhere)") from None
    hd = head_dim_of(config)
    if verify and hd < VLLM_CPU_MIN_HEAD_DIM and not _has_cuda():
        raise SlimdeployError(
            f"vLLM's CPU attention does not support head_dim {hd} (needs >= {VLLM_CPU_MIN_HEAD_DIM}), so the "
            "export cannot be verified here; export with --no-verify (verify: false) or verify on a GPU"
        )
