"""vLLM-ready checkpoints: the stock architecture in safetensors with config, tokenizer and generation
config, loadable offline by `vllm serve DIR` and `LLM(model=DIR)`, verified by actually serving it.

Per-layer widths (global allocation) are written in vLLM's DeciLM ("nemotron-nas") format with the config
and modeling code in the checkpoint (`auto_map`), so that transformers loads it too (trust_remote_code);
see `nemotron_nas.py`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.feasibility import ARCHITECTURES, VLLM_CPU_MIN_HEAD_DIM, head_dim_of, read_config
from slimdeploy.export.nemotron_nas import to_nemotron_nas
from slimdeploy.utils.fs import atomic_dir
from slimdeploy.utils.trust import remote_code_allowed

DECILM_CODE = Path(__file__).parent / "decilm"
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
    kvs, inters = [kv], [config["intermediate_size"]]
    if "block_configs" in config:  # per-layer widths: every layer must split
        blocks = config["block_configs"]
        kvs = [heads // b["attention"]["n_heads_in_group"] for b in blocks if not b["attention"]["no_op"]]
        inters = [b["ffn"]["intermediate_size"] for b in blocks if not b["ffn"]["no_op"]]
    checks = {
        "num_attention_heads % tp == 0": heads % tp_size == 0,
        "kv heads divisible by tp or replicable": all(k % tp_size == 0 or tp_size % k == 0 for k in kvs),
        "intermediate_size % tp == 0": all(i % tp_size == 0 for i in inters),
    }
    return {"tp_size": tp_size, "ok": all(checks.values()), "checks": checks}


def check_supported(model_dir: Path) -> dict:
    """Refuse what this exporter cannot represent, before writing anything."""
    config = read_config(model_dir)
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise SlimdeployError(
            f"unsupported architecture {arch} for the vLLM export; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    if not list(model_dir.glob("*.safetensors")):
        raise SlimdeployError(f"{model_dir} has no safetensors weights")
    return config


def export_vllm(
    model_dir: Path,
    out: Path,
    tp_size: int = 1,
    verify: bool = True,
    force: bool = False,
    n_tokens: int = 16,
    dtype: str = "fp32",
) -> dict:
    """Write the checkpoint to `out` (whole or not at all) and serve it once with vLLM to verify it. The
    weights are copied as they are (`dtype` fp32: vLLM casts at load time)."""
    from slimdeploy.load.model import load_model

    model_dir = Path(model_dir)
    config = check_supported(model_dir)
    loaded = load_model(str(model_dir), "fp32")  # also validates the weights before anything is written
    per_layer = "slimdeploy_layer_widths" in config
    report: dict = {"format": "vllm", "source": str(model_dir)}
    if per_layer:
        config, state, report["nemotron_nas"] = to_nemotron_nas(loaded.model)
    report["architecture"] = config["architectures"][0]
    report["tensor_parallel"] = tp_readiness(config, tp_size)
    report["head_dim"] = head_dim_of(config)
    report["cpu_attention_ok"] = report["head_dim"] >= VLLM_CPU_MIN_HEAD_DIM
    from slimdeploy.quantize.serving import scheme_of

    quantized = scheme_of(config)
    if quantized:
        report["quantization"] = quantized
    with atomic_dir(out, force, [model_dir], what="export") as tmp:
        if per_layer:
            write_nemotron_nas(tmp, config, state)
        else:
            for shard in model_dir.glob("*.safetensors"):
                shutil.copy2(shard, tmp / shard.name)
        for name in COPY:
            if (model_dir / name).exists() and not (per_layer and name == "config.json"):
                shutil.copy2(model_dir / name, tmp / name)
        if not (tmp / "generation_config.json").exists():
            loaded.model.generation_config.save_pretrained(tmp)
        if per_layer:
            report["transformers_parity"] = check_reload(tmp, loaded)
        if verify and quantized:
            report["verification"] = verify_quantized_vllm(tmp, loaded, n_tokens, config)
        elif verify:
            report["verification"] = verify_vllm(
                tmp, loaded, n_tokens, tp_size if report["tensor_parallel"]["ok"] else 1
            )
        (tmp / "export_report.json").write_text(json.dumps(report, indent=1))
    return report


def write_nemotron_nas(out: Path, config: dict, state: dict) -> None:
    """config.json with auto_map, the config/modeling code beside it, and the weights in one safetensors file."""
    from safetensors.torch import save_file

    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("configuration_decilm.py", "modeling_decilm.py"):
        shutil.copy2(DECILM_CODE / name, out / name)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, out / "model.safetensors", {"format": "pt"})


def check_reload(export_dir: Path, loaded, atol: float = 1e-5) -> dict:
    """transformers loads the DeciLM checkpoint (trust_remote_code) and gives the source model's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from slimdeploy.export.verify import default_prompts

    trusted = remote_code_allowed(export_dir)  # the code we just copied in: byte-identical to ours
    model = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=trusted, dtype=torch.float32).eval()
    worst = 0.0
    with torch.no_grad():
        for prompt in default_prompts(loaded.tokenizer):
            ids = torch.tensor([prompt])
            diff = (model(ids).logits - loaded.model(ids).logits).abs().max().item()
            worst = max(worst, diff)
    if not worst <= atol:
        raise SlimdeployError(
            f"the DeciLM checkpoint's logits differ from the source by {worst:.2e} (> {atol}); not written"
        )
    return {"max_abs_logit_diff": worst, "atol": atol, "dtype": "float32"}


def verify_quantized_vllm(export_dir: Path, loaded, n_tokens: int, config: dict) -> dict:
    """vLLM's greedy tokens for a quantized checkpoint, checked against a torch simulation of its scheme by
    teacher-forced top-1 agreement (quantize/serving.py says why and states the floor)."""
    import torch

    from slimdeploy.export.verify import default_prompts, top1_agreement
    from slimdeploy.export.vllm_runner import vllm_greedy
    from slimdeploy.quantize.serving import AGREEMENT_FLOOR, check_served

    dtype = check_served(config, torch.cuda.is_available()) or "float32"
    prompts = default_prompts(loaded.tokenizer)
    t0 = time.perf_counter()
    got = vllm_greedy(
        export_dir, prompts, n_tokens, dtype=dtype, max_model_len=min(512, loaded.model.config.max_position_embeddings)
    )
    result = {"dtype": dtype, "runtime": "vllm", "check": "teacher-forced top-1 agreement with a torch simulation"}
    result |= top1_agreement(loaded.model, prompts, got, AGREEMENT_FLOOR)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if result["agreement"] < AGREEMENT_FLOOR:
        raise SlimdeployError(
            f"vLLM's tokens for the quantized checkpoint agree with the simulation of its scheme at "
            f"{result['agreement']:.1%} of positions (< {AGREEMENT_FLOOR:.0%}); export not written"
        )
    return result


def verify_vllm(export_dir: Path, loaded, n_tokens: int, tp_size: int = 1) -> dict:
    """Greedy tokens from vLLM (fp32) against transformers (fp32) on fixed prompts; with `tp_size` > 1 vLLM
    serves the checkpoint sharded (tensor_parallel_size), when the machine has that many GPUs or CPU cores."""
    import torch

    from slimdeploy.export.verify import compare_tokens, default_prompts, hf_greedy
    from slimdeploy.export.vllm_runner import cpus_for_tp, vllm_greedy

    served_tp, why = tp_size, None
    if tp_size > 1:
        have = torch.cuda.device_count() if torch.cuda.is_available() else len(cpus_for_tp(1) or [])
        if have < tp_size:
            served_tp, why = 1, f"{have} {'GPUs' if torch.cuda.is_available() else 'CPU cores'} < tp_size {tp_size}"
    prompts = default_prompts(loaded.tokenizer)
    t0 = time.perf_counter()
    got = vllm_greedy(
        export_dir,
        prompts,
        n_tokens,
        dtype="float32",
        max_model_len=min(512, loaded.model.config.max_position_embeddings),
        trust_remote_code=remote_code_allowed(export_dir),  # our own code, written by this export (hash-checked)
        tensor_parallel_size=served_tp,
    )
    ref = hf_greedy(loaded.model, prompts, n_tokens)
    result = {
        "dtype": "float32",
        "runtime": "vllm",
        "tensor_parallel_size": served_tp,
        **({"tensor_parallel_not_served": why} if why else {}),
        **compare_tokens(ref, got),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if result["identical"] < result["prompts"]:
        raise SlimdeployError(
            f"vLLM's greedy tokens differ from transformers': common prefixes "
            f"{result['common_prefix']} of {n_tokens}; export not written"
        )
    return result
