"""vLLM export: refuses what it cannot represent before writing; a pruned model served by vLLM (CPU, fp32)
gives the same greedy tokens as transformers for 4 prompts x 16 tokens."""

from __future__ import annotations

import json

import pytest

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.vllm import export_vllm, tp_readiness
from slimdeploy.export.vllm_runner import vllm_available
from slimdeploy.load.checkpoint import save_model
from slimdeploy.load.tiny import build_tiny_model
from slimdeploy.prune.api import PruneConfig, prune


def _pruned_dir(tmp_path, tokenizer, allocation="uniform", tp_size=1):
    model = build_tiny_model(
        "llama",
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=1024,
        num_hidden_layers=2,
        max_position_embeddings=512,
    )
    criterion = "random" if allocation == "global" else "l2"  # random scores make the layers differ
    prune(
        model,
        PruneConfig(
            ratio=0.2,
            criterion=criterion,
            round_to=64 if allocation == "uniform" else 8,
            allocation=allocation,
            structures=["mlp", "head", "kv"],
            tp_size=tp_size,
        ),
        None,
    )
    path = tmp_path / f"pruned-{allocation}"
    path.mkdir()
    save_model(model, tokenizer, path)
    return path


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed (pip install 'slimdeploy[cpu]')")
def test_pruned_model_served_by_vllm_matches_transformers(tmp_path, tokenizer):
    src = _pruned_dir(tmp_path, tokenizer)
    report = export_vllm(src, tmp_path / "out")
    v = report["verification"]
    assert v["identical"] == v["prompts"] == 4 and v["tokens_per_prompt"] == 16
    saved = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert saved["verification"]["identical"] == 4
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed (pip install 'slimdeploy[cpu]')")
def test_tp2_export_served_sharded_by_vllm(tmp_path, tokenizer):
    """A tp_size 2 prune + export is served by vLLM with tensor_parallel_size=2 (on the CPU build: one worker
    per core, threads bound by us) and gives transformers' greedy tokens."""
    import os

    src = _pruned_dir(tmp_path, tokenizer, tp_size=2)
    report = export_vllm(src, tmp_path / "out", tp_size=2)
    assert report["tensor_parallel"]["ok"]
    v = report["verification"]
    cores = len(os.sched_getaffinity(0))
    assert v["tensor_parallel_size"] == (2 if cores >= 2 else 1), v
    assert v["identical"] == v["prompts"] == 4


def test_cpu_thread_binding_gives_each_tp_worker_its_own_cores(monkeypatch):
    from slimdeploy.export import vllm_runner

    monkeypatch.setattr(vllm_runner, "cpus_for_tp", lambda tp: [0, 1, 2, 3] if tp <= 4 else None)
    assert vllm_runner.cpu_thread_binding(2, {}) == {"VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3"}
    assert vllm_runner.cpu_thread_binding(4, {}) == {"VLLM_CPU_OMP_THREADS_BIND": "0|1|2|3"}
    assert vllm_runner.cpu_thread_binding(2, {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}) == {}  # the user's is kept
    assert vllm_runner.cpu_thread_binding(8, {}) == {}  # too few cores: vLLM reports it itself


def test_unsupported_architecture_and_existing_output(tmp_path, tokenizer):
    src = _pruned_dir(tmp_path, tokenizer)
    (tmp_path / "taken").mkdir()
    with pytest.raises(SlimdeployError, match="already exists"):
        export_vllm(src, tmp_path / "taken", verify=False)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SlimdeployError, match="unsupported architecture"):
        export_vllm(src, tmp_path / "out", verify=False)
    assert not (tmp_path / "out").exists()


def test_corrupt_model_dir(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(SlimdeployError, match="not valid JSON"):
        export_vllm(tmp_path / "bad", tmp_path / "out", verify=False)


def test_tp_readiness():
    ok = tp_readiness({"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512}, 2)
    bad = tp_readiness({"num_attention_heads": 3, "num_key_value_heads": 3, "intermediate_size": 500}, 2)
    assert ok["ok"] and not bad["ok"]


def test_pruned_model_as_onnxruntime_genai_package(tmp_path, tokenizer):
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai not installed (pip install 'slimdeploy[cpu]')")
    from slimdeploy.export.ort_genai import export_ort_genai

    src = _pruned_dir(tmp_path, tokenizer)
    report = export_ort_genai(src, tmp_path / "og")
    v = report["verification"]
    assert v["identical"] == v["prompts"] == 4
    assert (tmp_path / "og" / "genai_config.json").exists() and (tmp_path / "og" / "model.onnx").exists()
    assert not (tmp_path / "og" / ".builder-cache").exists()
