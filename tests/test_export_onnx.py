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


def test_int8_export_quantizes_weights_per_channel_and_agrees(tmp_path):
    """The demo (trained: peaked logits) exported int8 passes the top-1 agreement floor, every weight MatMul but
    the LM head is quantized, and the stored codes and scales are the scheme computed here."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from slimdeploy.export.onnx import INT8_AGREEMENT_FLOOR, export_onnx
    from slimdeploy.load.model import load_model
    from slimdeploy.zoo.registry import demo_model_dir

    report = export_onnx(demo_model_dir(), tmp_path / "int8", dtype="int8")
    v = report["verification"]
    assert v["dtype"] == "int8" and v["top1_agreement"]["agreeing"] >= INT8_AGREEMENT_FLOOR * v["prompts"] * 16
    model = load_model(str(demo_model_dir()), "fp32").model
    n_layers = model.config.num_hidden_layers
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantized = [n for n in graph.node if n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger")]
    assert len(quantized) == n_layers * 7  # q k v o gate up down per layer; the LM head is not among them
    assert any(n.op_type == "MatMul" and "logits" in n.output for n in graph.node)
    # independent: symmetric int8 per output channel has scale = max|w| / 127 and |w - q * scale| <= scale / 2
    down = model.model.layers[-1].mlp.down_proj.weight.detach().numpy().T  # (in, out), as ONNX's MatMul reads it
    scales = {n: a for n, a in inits.items() if n.endswith("_scale") and a.shape == (down.shape[1],)}
    matches = 0
    for q in inits.values():
        if q.dtype != np.int8 or q.shape != down.shape:
            continue
        for scale in scales.values():
            deq = q.astype(np.float64) * scale.astype(np.float64)[None, :]
            if np.abs(deq - down).max() <= scale.max() / 2 + 1e-7:
                matches += 1
                np.testing.assert_allclose(scale, np.abs(down).max(0) / 127, rtol=1e-5)
    assert matches == 1, "exactly one int8 initializer must dequantize to the last layer's down_proj"


def test_int8_below_the_agreement_floor_is_refused_and_nothing_written(tmp_path, tokenizer):
    """A random tiny model's logits are nearly flat: int8 flips many argmaxes, and the export must say so."""
    from slimdeploy.export.onnx import export_onnx

    src = tmp_path / "src"
    src.mkdir()
    save_model(_tiny("llama", num_hidden_layers=2, max_position_embeddings=256), tokenizer, src)
    with pytest.raises(SlimdeployError, match="below the floor of 95%"):
        export_onnx(src, tmp_path / "int8", dtype="int8")
    assert not (tmp_path / "int8").exists() and not list(tmp_path.glob(".int8*"))
