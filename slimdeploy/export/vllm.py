"""vLLM-ready checkpoints: the stock architecture in safetensors with config, tokenizer and generation
config, loadable offline by `vllm serve DIR` and `LLM(model=DIR)`, verified by actually serving it.

Per-layer widths (global allocation) need the DeciLM ("nemotron-nas") format: not in this version yet, so
such models are refused before anything is written.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.prune.io import atomic_dir

VLLM_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
COPY = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "pruning.json",
    "README.md",
)


def tp_readiness(config: dict, tp_size: int) -> dict:
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    inter = config["intermediate_size"]
    checks = {
        "num_attention_heads % tp == 0": heads % tp_size == 0,
        "kv heads divisible by tp or replicable": kv % tp_size == 0 or tp_size % kv == 0,
        "intermediate_size % tp == 0": inter % tp_size == 0,
    }
    return {"tp_size": tp_size, "ok": all(checks.values()), "checks": checks}


def check_supported(model_dir: Path) -> dict:
    """Refuse what this exporter cannot represent, before writing anything."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise SlimdeployError(f"{model_dir} is not a model directory (no config.json)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise SlimdeployError(f"{cfg_path} is not valid JSON ({exc.msg}); re-export the model") from None
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in VLLM_ARCHITECTURES:
        raise SlimdeployError(
            f"unsupported architecture {arch} for the vLLM export; supported: {', '.join(sorted(VLLM_ARCHITECTURES))}"
        )
    if "slimdeploy_layer_widths" in config:
        raise SlimdeployError(
            "this model has per-layer widths (global allocation): the vLLM export of that "
            "(DeciLM block_configs) is not available yet; prune with --allocation uniform"
        )
    if not list(model_dir.glob("*.safetensors")):
        raise SlimdeployError(f"{model_dir} has no safetensors weights")
    return config


def export_vllm(
    model_dir: Path, out: Path, tp_size: int = 1, verify: bool = True, force: bool = False, n_tokens: int = 16
) -> dict:
    """Write the checkpoint to `out` (whole or not at all) and serve it once with vLLM to verify it."""
    from slimdeploy.load.model import load_model

    model_dir = Path(model_dir)
    config = check_supported(model_dir)
    loaded = load_model(str(model_dir), "fp32")  # also validates the weights before anything is written
    report: dict = {
        "format": "vllm",
        "source": str(model_dir),
        "architecture": config["architectures"][0],
        "tensor_parallel": tp_readiness(config, tp_size),
        "head_dim": config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
    }
    report["cpu_attention_ok"] = report["head_dim"] >= 32  # vLLM's CPU attention rejects small head sizes
    with atomic_dir(out, force) as tmp:
        for shard in model_dir.glob("*.safetensors"):
            shutil.copy2(shard, tmp / shard.name)
        for name in COPY:
            if (model_dir / name).exists():
                shutil.copy2(model_dir / name, tmp / name)
        if not (tmp / "generation_config.json").exists():
            loaded.model.generation_config.save_pretrained(tmp)
        if verify:
            report["verification"] = verify_vllm(tmp, loaded, n_tokens)
        (tmp / "export_report.json").write_text(json.dumps(report, indent=1))
    return report


def verify_vllm(export_dir: Path, loaded, n_tokens: int) -> dict:
    """Greedy tokens from vLLM (fp32) against transformers (fp32) on fixed prompts."""
    from slimdeploy.export.verify import compare_tokens, default_prompts, hf_greedy
    from slimdeploy.serve.vllm_runner import vllm_greedy

    prompts = default_prompts(loaded.tokenizer)
    t0 = time.perf_counter()
    got = vllm_greedy(
        export_dir,
        prompts,
        n_tokens,
        dtype="float32",
        max_model_len=min(512, loaded.model.config.max_position_embeddings),
    )
    ref = hf_greedy(loaded.model, prompts, n_tokens)
    result = {
        "dtype": "float32",
        "runtime": "vllm",
        **compare_tokens(ref, got),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if result["identical"] < result["prompts"]:
        raise SlimdeployError(
            f"vLLM's greedy tokens differ from transformers': common prefixes "
            f"{result['common_prefix']} of {n_tokens}; export not written"
        )
    return result
