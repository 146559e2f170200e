"""Plain ONNX export (torch.onnx dynamo, explicit KV cache): the cache wrapper equals transformers in
PyTorch; onnxruntime logits match transformers for prefill and every decode step (fp32: atol 1e-4 +
rtol 1e-4, fp16: atol 5e-2 + rtol 1e-2) and greedy tokens are identical for 4 prompts x 16 tokens (fp32)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import per_layer_dir, run_cli

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.onnx_decoder import DecoderWithCache
from slimdeploy.load.checkpoint import save_model
from slimdeploy.load.tiny import build_tiny_model

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'slimdeploy[cpu]')")


def _tiny(family: str, **kw):
    return build_tiny_model(
        family, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96, **kw
    ).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_cache_wrapper_equals_transformers(family):
    model = _tiny(family, num_hidden_layers=2)
    wrapper = DecoderWithCache(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
        first = wrapper(ids[:, :5], *wrapper.empty_cache(batch=2))
        second = wrapper(ids[:, 5:6], *first[1:])
        third = wrapper(ids[:, 6:], *second[1:])
    got = torch.cat([first[0], second[0], third[0]], dim=1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert third[1].shape[2] == 9  # the cache holds every position


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_onnx_export_matches_transformers(tmp_path, tokenizer, family):
    from slimdeploy.export.onnx import export_onnx

    src = tmp_path / "src"
    src.mkdir()
    save_model(_tiny(family, num_hidden_layers=2, max_position_embeddings=256), tokenizer, src)
    report = export_onnx(src, tmp_path / "onnx")
    v = report["verification"]
    assert v["logits_within_tolerance"] and v["identical"] == v["prompts"] == 4 and v["tokens_per_prompt"] == 16
    assert v["max_abs_logit_diff"]["decode"] <= 1e-4
    io = json.loads((tmp_path / "onnx" / "onnx_config.json").read_text())
    assert io["inputs"][:2] == ["input_ids", "past_key_0"] and len(io["outputs"]) == 1 + 2 * 2
    assert (tmp_path / "onnx" / "tokenizer.json").exists()


def test_onnx_export_of_per_layer_widths_and_fp16(tmp_path, tokenizer):
    from slimdeploy.export.onnx import export_onnx

    src = per_layer_dir(tmp_path, tokenizer)
    report = export_onnx(src, tmp_path / "onnx")
    assert report["per_layer_widths"] and report["verification"]["identical"] == 4
    cache = json.loads((tmp_path / "onnx" / "onnx_config.json").read_text())["cache"]
    assert [c["kv_heads"] for c in cache] == [4, 1, 2, 3]
    half = export_onnx(src, tmp_path / "onnx16", dtype="fp16")["verification"]
    assert half["logits_within_tolerance"] and half["dtype"] == "fp16"


def test_bf16_refused_on_cpu_and_nothing_written(tmp_path, tokenizer):
    import onnxruntime as ort

    from slimdeploy.export.onnx import export_onnx

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU provider may run bf16")
    src = tmp_path / "src"
    src.mkdir()
    save_model(_tiny("llama", num_hidden_layers=1), tokenizer, src)
    with pytest.raises(SlimdeployError, match="cannot run the bf16 graph"):
        export_onnx(src, tmp_path / "bf16", dtype="bf16")
    assert not (tmp_path / "bf16").exists() and not list(tmp_path.glob(".bf16*"))


def test_cli_export_onnx(tmp_path, tokenizer, capsys):
    src = tmp_path / "src"
    src.mkdir()
    save_model(_tiny("llama", num_hidden_layers=1), tokenizer, src)
    code, out, err = run_cli(["export", str(src), "--format", "onnx", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "identical to transformers for 4/4 prompts" in out and (tmp_path / "o" / "export_report.json").exists()
    code, _, err = run_cli(
        ["export", str(src), "--format", "onnx", "--dtype", "int4", "--out", str(tmp_path / "p")], capsys
    )
    assert code == 1 and "dtype 'int4'" in err and not (tmp_path / "p").exists()
