"""Per-layer widths on disk as the DeciLM ("nemotron-nas") checkpoint that stock transformers and vLLM load.

A model whose layers have different widths (global allocation) has no stock config: `LlamaConfig` has one
`intermediate_size`. So such outputs are written in the DeciLM format (config with `block_configs` and
`auto_map`, slimdeploy's two code files beside it): `AutoModelForCausalLM.from_pretrained(DIR,
trust_remote_code=True)` loads it, and `vllm serve DIR --trust-remote-code` serves it. The format keeps query
heads global and lets each layer choose its KV heads and MLP width; shapes it cannot express are zero-padded,
which is exact (a padded query head has zero q rows and zero o_proj columns; a padded KV head is attended
only by padded query heads). config.json also carries `slimdeploy_base_config` (the stock config) and
`slimdeploy_layer_widths`, so slimdeploy reads the narrow model back without the padding (`unpad_layer`).

Pure tensor and dict functions; file I/O in `write_decilm_in_place` and `read_decilm_state`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slimdeploy.errors import SlimdeployError

if TYPE_CHECKING:  # torch-free at import: config readers (feasibility, preflight) use `logical_config`
    import torch

DECILM_CODE = Path(__file__).resolve().parent.parent / "export" / "decilm"
SUPPORTED = {"llama", "mistral", "qwen2"}  # no q_norm/k_norm (Qwen3), no sliding windows
QKV_BIAS = {"llama": False, "mistral": False, "qwen2": True}
AUTO_MAP = {
    "AutoConfig": "configuration_decilm.DeciLMConfig",
    "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
}
BASE_KEY = "slimdeploy_base_config"
WIDTHS_KEY = "slimdeploy_layer_widths"


@dataclass(frozen=True)
class BlockPlan:
    heads: int  # live query heads of the pruned layer
    kv_heads: int  # live KV heads
    group: int  # n_heads_in_group in the export (0 when attention is a no-op)
    intermediate: int  # 0 when the MLP is a no-op

    def padded_kv(self, total_heads: int) -> int:
        return total_heads // self.group if self.group else 0


def plan_blocks(widths: list[dict], total_heads: int) -> list[BlockPlan]:
    """Pick, per layer, the n_heads_in_group that needs the fewest padded KV heads (pure)."""
    plans = []
    for i, w in enumerate(widths):
        heads, kv = w["heads"], w["kv_heads"]
        if heads == 0:
            plans.append(BlockPlan(0, 0, 0, w["intermediate"]))
            continue
        per_kv = heads // kv
        fits = [g for g in range(per_kv, total_heads + 1) if total_heads % g == 0 and total_heads // g >= kv]
        if not fits:
            raise SlimdeployError(
                f"layer {i}: {kv} KV heads x {per_kv} query heads do not fit {total_heads} global query heads"
            )
        plans.append(BlockPlan(heads, kv, max(fits), w["intermediate"]))
    return plans


def block_configs(plans: list[BlockPlan]) -> list[dict]:
    return [
        {
            "attention": {"no_op": p.group == 0, "n_heads_in_group": p.group or None},
            "ffn": {"no_op": p.intermediate == 0, "intermediate_size": p.intermediate or None},
        }
        for p in plans
    ]


def check_representable(config: dict) -> None:
    """Refuse, from the stock config alone, a model whose per-layer widths the format cannot carry."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise SlimdeployError(
            f"per-layer widths are saved in the DeciLM (nemotron-nas) format, which cannot represent "
            f"{model_type} models (supported: {', '.join(sorted(SUPPORTED))}); prune with allocation uniform"
        )
    window = config.get("sliding_window")
    if window and config.get("use_sliding_window", True) and window < config.get("max_position_embeddings", 0):
        raise SlimdeployError("the DeciLM format has no sliding-window attention; prune with allocation uniform")


def _slots(plan: BlockPlan) -> list[int]:
    """The export's query-head slot of each live head, in the pruned model's order (grouped by KV head)."""
    per_kv = plan.heads // plan.kv_heads
    return [j * plan.group + t for j in range(plan.kv_heads) for t in range(per_kv)]


def _spread(w: torch.Tensor, plan: BlockPlan, total: int, head_dim: int, dim: int) -> torch.Tensor:
    shape = list(w.shape)
    shape[dim] = total * head_dim
    out = w.new_zeros(shape)
    for src, dst in enumerate(_slots(plan)):
        out.narrow(dim, dst * head_dim, head_dim).copy_(w.narrow(dim, src * head_dim, head_dim))
    return out


def _gather(w: torch.Tensor, plan: BlockPlan, head_dim: int, dim: int) -> torch.Tensor:
    import torch

    parts = [w.narrow(dim, s * head_dim, head_dim) for s in _slots(plan)]
    return torch.cat(parts, dim=dim).contiguous()


def _pad_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    out = w.new_zeros((rows, *w.shape[1:]))
    out[: w.shape[0]] = w
    return out


ATTN = ("input_layernorm.weight", "self_attn.")
MLP = ("post_attention_layernorm.weight", "mlp.")


def pad_layer(state: dict[str, torch.Tensor], plan: BlockPlan, total: int, head_dim: int) -> dict[str, torch.Tensor]:
    """One layer's tensors (names relative to the layer) in the export's shapes (pure)."""
    out: dict[str, torch.Tensor] = {}
    for name, w in state.items():
        if name.startswith(ATTN):
            if not plan.group:
                continue
            if name.startswith(("self_attn.q_proj.", "self_attn.o_proj.weight")):
                w = _spread(w, plan, total, head_dim, 1 if name.startswith("self_attn.o_proj") else 0)
            elif name.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                w = _pad_rows(w, plan.padded_kv(total) * head_dim)
        elif name.startswith(MLP) and not plan.intermediate:
            continue
        out[name] = w
    return out


def unpad_layer(state: dict[str, torch.Tensor], plan: BlockPlan, head_dim: int) -> dict[str, torch.Tensor]:
    """The inverse of `pad_layer`: the live heads only (pure). No-op blocks have no tensors either way."""
    out: dict[str, torch.Tensor] = {}
    for name, w in state.items():
        if name.startswith(("self_attn.q_proj.", "self_attn.o_proj.weight")):
            w = _gather(w, plan, head_dim, 1 if name.startswith("self_attn.o_proj") else 0)
        elif name.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            w = w[: plan.kv_heads * head_dim].contiguous()
        out[name] = w
    return out


def decilm_config(base: dict, widths: list[dict]) -> tuple[dict, list[BlockPlan]]:
    """The DeciLM config.json for a stock config `base` whose layers have `widths` (pure)."""
    check_representable(base)
    total = base["num_attention_heads"]
    plans = plan_blocks(widths, total)
    config = {k: v for k, v in base.items() if k not in (WIDTHS_KEY, BASE_KEY, "auto_map", "use_sliding_window")}
    config.pop("transformers_version", None)
    first_kv = next((total // p.group for p in plans if p.group), base.get("num_key_value_heads", total))
    config.update(
        architectures=["DeciLMForCausalLM"],
        model_type="nemotron-nas",
        auto_map=dict(AUTO_MAP),
        block_configs=block_configs(plans),
        num_key_value_heads=first_kv,
        intermediate_size=max((p.intermediate for p in plans), default=0),
        attention_bias=False,
        qkv_bias=QKV_BIAS[base["model_type"]],
        mlp_bias=False,
    )
    return config, plans


def head_dim_of(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _split(name: str) -> tuple[int, str] | None:
    """model.layers.{i}.{rest} -> (i, rest)."""
    if not name.startswith("model.layers."):
        return None
    i, _, rest = name.removeprefix("model.layers.").partition(".")
    return int(i), rest


def map_layers(state: dict[str, torch.Tensor], fn) -> dict[str, torch.Tensor]:
    """`state` with each decoder layer's tensors replaced by fn(layer index, layer-relative tensors)."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    out = {}
    for name, w in state.items():
        split = _split(name)
        if split is None:
            out[name] = w
        else:
            layers.setdefault(split[0], {})[split[1]] = w
    for i, layer in layers.items():
        out |= {f"model.layers.{i}.{k}": v for k, v in fn(i, layer).items()}
    return out


def _convert_file(path: Path, fn) -> list[str]:
    """Rewrite one safetensors file with fn(layer index, layer-relative state) per layer; returns its names."""
    from safetensors.torch import load_file, save_file

    out = map_layers(load_file(path), fn)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in out.items()}, tmp, {"format": "pt"})
    tmp.replace(path)
    return list(out)


def write_decilm_in_place(out_dir: Path) -> None:
    """Turn a folder holding a narrow per-layer model (stock config.json + widths, weights in
    the pruned shapes) into the DeciLM checkpoint, one safetensors file at a time (sequential pruning's
    outputs never fit in memory whole)."""
    base = json.loads((out_dir / "config.json").read_text())
    widths = base.pop(WIDTHS_KEY)
    config, plans = decilm_config(base, widths)
    total, hd = base["num_attention_heads"], head_dim_of(base)
    weight_map = {}
    for shard in sorted(out_dir.glob("*.safetensors")):
        for name in _convert_file(shard, lambda i, s: pad_layer(s, plans[i], total, hd)):
            weight_map[name] = shard.name
    index = out_dir / "model.safetensors.index.json"
    if index.exists():
        meta = json.loads(index.read_text())
        meta["weight_map"] = dict(sorted(weight_map.items()))
        meta.setdefault("metadata", {})["total_size"] = sum(
            (out_dir / f).stat().st_size for f in set(weight_map.values())
        )
        index.write_text(json.dumps(meta, indent=1))
    config |= {BASE_KEY: base, WIDTHS_KEY: widths}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("configuration_decilm.py", "modeling_decilm.py"):
        shutil.copy2(DECILM_CODE / name, out_dir / name)


def logical_config(config: dict) -> dict:
    """What a model folder's config describes for slimdeploy: the stock config plus per-layer widths, whether
    it is stored as our DeciLM checkpoint or (earlier versions) as a stock config with widths beside it."""
    if BASE_KEY in config:
        return {**config[BASE_KEY], WIDTHS_KEY: config[WIDTHS_KEY]}
    return config


def unpad_state(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A DeciLM checkpoint's tensors (written by `write_decilm_in_place`) in the narrow model's shapes."""
    base, widths = config[BASE_KEY], config[WIDTHS_KEY]
    plans = plan_blocks(widths, base["num_attention_heads"])
    hd = head_dim_of(base)
    return map_layers(state, lambda i, layer: unpad_layer(layer, plans[i], hd))
