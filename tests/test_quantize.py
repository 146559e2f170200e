"""Quantization maths: the grid equals compressed-tensors' own (the library vLLM reads), GPTQ's layer output
error is below round-to-nearest's on real activations, and its result lies on the grid of its scales."""

from __future__ import annotations

import pytest
import torch

from slimdeploy.quantize.maths import dequantize, gptq, output_error, quantize_codes, rtn, symmetric_scale


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 128), (4, 64)])
def test_grid_matches_compressed_tensors(bits, group_size):
    """scale, codes and dequantized values against compressed-tensors' calculate_qparams / quantize /
    dequantize (an independent implementation of the same scheme)."""
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize
    from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    del ct
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(0)) * 0.05
    w[3] = 0.0  # an all-zero row
    strategy = "channel" if group_size is None else "group"
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy=strategy, group_size=group_size)
    g = w if group_size is None else w.reshape(48, -1, group_size)
    ct_scale, ct_zp = calculate_qparams(
        g.amin(-1, keepdim=group_size is None), g.amax(-1, keepdim=group_size is None), args
    )
    ct_scale = ct_scale.reshape(48, -1)
    scale = symmetric_scale(w, bits, group_size)
    live = w.reshape(48, scale.shape[1], -1).abs().amax(-1) > 0
    torch.testing.assert_close(scale[live], ct_scale.float()[live])
    codes = quantize_codes(w, scale, bits, group_size)
    ct_codes = ct_quantize(w, ct_scale, ct_zp.reshape(48, -1), args, dtype=torch.int8)
    assert torch.equal(
        codes[live.repeat_interleave(w.shape[1] // scale.shape[1], 1)],
        ct_codes[live.repeat_interleave(w.shape[1] // scale.shape[1], 1)],
    )
    torch.testing.assert_close(
        dequantize(codes, scale, group_size), ct_dequantize(ct_codes, ct_scale, ct_zp.reshape(48, -1), args).float()
    )


def _activations(n: int = 2048, d: int = 256) -> torch.Tensor:
    """Inputs with the structure real ones have: correlated features and a few outlier channels."""
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(d, d, generator=g) / d**0.5
    x = torch.randn(n, d, generator=g) @ mix
    x[:, :4] *= 20
    return x


@pytest.mark.parametrize(
    "bits,group_size,actorder", [(8, None, False), (4, 128, False), (4, None, True), (3, 64, False)]
)
def test_gptq_beats_rtn_and_stays_on_its_grid(bits, group_size, actorder):
    x = _activations()
    h = x.T @ x / len(x)
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    q_rtn, _ = rtn(w, bits, group_size)
    q, scale = gptq(w, h, bits, group_size, actorder=actorder)
    e_rtn, e_gptq = output_error(w, q_rtn, h), output_error(w, q, h)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
    codes = quantize_codes(q, scale, bits, group_size)  # re-quantizing GPTQ's values changes nothing
    torch.testing.assert_close(dequantize(codes, scale, group_size), q, atol=1e-6, rtol=0)


def test_output_error_is_the_mean_squared_output_difference():
    x = _activations(512, 32)
    w, w_q = torch.randn(8, 32), torch.randn(8, 32)
    direct = ((x @ w.T - x @ w_q.T) ** 2).sum(1).mean()
    assert abs(output_error(w, w_q, x.T @ x / len(x)) - direct.item()) < 1e-3 * direct.item()


def _per_token_int8(module, args):
    """Dynamic symmetric int8 per token, compressed-tensors' convention (max|x| / 127.5)."""
    x = args[0]
    scale = x.abs().amax(-1, keepdim=True) / 127.5
    return (torch.round(x / scale).clamp(-128, 127) * scale,)


def _tiny(path, tokenizer):
    from slimdeploy.load.tiny import build_tiny_model

    build_tiny_model(
        "llama", hidden_size=128, intermediate_size=256, head_dim=32, num_attention_heads=4
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("scheme,method", [("w8a8", "rtn"), ("w4a16", "rtn"), ("w8a8", "gptq")])
def test_quantize_writes_a_checkpoint_stock_transformers_loads(scheme, method, tmp_path, tokenizer, text_file, capsys):
    """The written codes x scales are the grid values of the source weights (RTN: exactly `rtn`, computed
    here independently of the stage); stock from_pretrained loads the folder; the tokenizer travels."""
    import json

    from conftest import run_cli
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    src = _tiny(tmp_path / "src", tokenizer)
    out = tmp_path / "q"
    args = ["quantize", str(src), "--out", str(out), "--scheme", scheme, "--method", method]
    args += ["--data", str(text_file), "--n-samples", "4", "--seq-len", "64"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (out / "tokenizer.json").is_file() and (out / "quantize_report.json").is_file()
    dense, got = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    name = "model.layers.1.mlp.down_proj"
    bits, group = (8, None) if scheme == "w8a8" else (4, 128)
    if scheme == "w8a8":
        values = dequantize(got[f"{name}.weight"], got[f"{name}.weight_scale"].reshape(128, -1), group)
    else:  # pack-quantized: eight 4-bit codes per int32; unpacked by compressed-tensors when loaded
        values = None
    if method == "rtn" and values is not None:
        torch.testing.assert_close(values, rtn(dense[f"{name}.weight"], bits, group)[0])
    stock = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.randint(1, 8000, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        if method == "rtn":  # the dense model with RTN weights (+ W8A8's per-token int8 inputs), computed here
            for mod_name, mod in ref.named_modules():
                if mod_name.startswith("model.layers.") and isinstance(mod, torch.nn.Linear):
                    mod.weight.copy_(rtn(mod.weight, bits, group)[0])
                    if scheme == "w8a8":
                        mod.register_forward_pre_hook(_per_token_int8)
        a, b = stock(ids).logits, ref(ids).logits
    if method == "rtn":
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    assert torch.isfinite(a).all()
    assert "lm_head.weight" not in got or got["lm_head.weight"].is_floating_point()


@pytest.mark.parametrize(
    "args,match",
    [
        (["--scheme", "w8a8", "--group-size", "64"], "drop group_size"),
        (["--scheme", "w4a16", "--actorder"], "actorder needs per-channel"),
        (["--scheme", "w2"], "scheme"),
        (["--method", "awq"], "method"),
    ],
)
def test_quantize_refuses_bad_settings_before_loading(args, match, tmp_path, tokenizer, capsys):
    from conftest import run_cli

    src = _tiny(tmp_path / "src", tokenizer)
    code, _, err = run_cli(["quantize", str(src), "--out", str(tmp_path / "q"), *args], capsys)
    assert code == 1 and match in err and err.count("\n") == 1, err
    assert not (tmp_path / "q").exists()


def test_quantize_refuses_a_quantized_or_per_layer_input(tmp_path, tokenizer, capsys):
    from conftest import per_layer_dir, run_cli

    src = _tiny(tmp_path / "src", tokenizer)
    assert run_cli(["quantize", str(src), "--out", str(tmp_path / "q"), "--method", "rtn"], capsys)[0] == 0
    code, _, err = run_cli(["quantize", str(tmp_path / "q"), "--out", str(tmp_path / "qq"), "--method", "rtn"], capsys)
    assert code == 1 and "already quantized" in err and not (tmp_path / "qq").exists()
    prune = ["prune", "--model", str(tmp_path / "q"), "--out", str(tmp_path / "pp"), "--criterion", "l2"]
    code, _, err = run_cli(prune, capsys)
    assert code == 1 and "is quantized" in err and not (tmp_path / "pp").exists()
    recipe = _recipe(tmp_path, [{"kind": "prune", "criterion": "l2"}])
    code, _, err = run_cli(["compress", "--recipe", recipe, "--model", str(tmp_path / "q"), "--out", "o"], capsys)
    assert code == 1 and "start from the unquantized model" in err
    per_layer = per_layer_dir(tmp_path, tokenizer)
    code, _, err = run_cli(["quantize", str(per_layer), "--out", str(tmp_path / "pq"), "--method", "rtn"], capsys)
    assert code == 1 and "per-layer widths" in err and not (tmp_path / "pq").exists()


@pytest.mark.slow
@pytest.mark.vllm
def test_w8a8_export_served_by_vllm_agrees_with_the_simulation(tmp_path, capsys):
    """vLLM serves the demo quantized to W8A8 (its int8 kernels exist on every x86 host), and its greedy
    tokens agree with a torch simulation of the scheme at >= 95% of positions (teacher-forced)."""
    import json

    from conftest import run_cli

    from slimdeploy.export.vllm_runner import vllm_available

    if not vllm_available():
        pytest.skip("vLLM not installed (pip install 'slimdeploy[cpu]')")
    q = tmp_path / "q"
    assert run_cli(["quantize", "--out", str(q), "--method", "rtn"], capsys)[0] == 0
    code, _, err = run_cli(["export", str(q), "--format", "vllm", "--out", str(tmp_path / "v")], capsys)
    assert code == 0, err
    v = json.loads((tmp_path / "v" / "export_report.json").read_text())["verification"]
    assert v["agreement"] >= 0.95 and v["positions"] == 64


def _recipe(tmp_path, stages) -> str:
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "stages": stages}))
    return str(path)


def test_quantize_stage_in_a_recipe_writes_the_quantized_output(tmp_path, tokenizer, text_file, capsys):
    """prune -> quantize -> eval: the output is the compressed-tensors checkpoint, the eval after quantize
    measures the quantized model (its own label), and the run resumes like any other."""
    import json

    from conftest import run_cli

    src = _tiny(tmp_path / "src", tokenizer)
    stages = [
        {"kind": "prune", "criterion": "l2", "ratio": 0.05, "round_to": 8},
        {"kind": "eval", "data": str(text_file), "max_tokens": 2000},
        {"kind": "quantize", "scheme": "w8a8", "method": "gptq", "data": str(text_file), "n_samples": 4,
         "seq_len": 64},
        {"kind": "eval", "data": str(text_file), "max_tokens": 2000},
    ]  # fmt: skip
    args = ["--json", "compress", "--recipe", _recipe(tmp_path, stages), "--model", str(src)]
    code, out, err = run_cli([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    ppl = json.loads(out)["summary"]["perplexity"]
    assert set(ppl) == {"pruned", "pruned w8a8"} and ppl["pruned w8a8"] != ppl["pruned"]
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (tmp_path / "o" / "pruning.json").is_file()


@pytest.mark.parametrize(
    "stages,match",
    [
        ([{"kind": "quantize", "method": "rtn"}, {"kind": "prune", "criterion": "l2"}], "move this stage before"),
        ([{"kind": "quantize", "method": "rtn"}, {"kind": "export", "format": "onnx"}], "vLLM only"),
        ([{"kind": "quantize", "method": "rtn"}, {"kind": "bench"}], "backend vllm"),
        (
            [{"kind": "prune", "criterion": "l2", "allocation": "global", "ratio": 0.05, "round_to": 8},
             {"kind": "quantize", "method": "rtn"}],
            "not quantized yet",
        ),
    ],
)  # fmt: skip
def test_quantize_recipes_refused_before_any_work(stages, match, tmp_path, tokenizer, capsys):
    from conftest import run_cli

    src = _tiny(tmp_path / "src", tokenizer)
    args = ["compress", "--recipe", _recipe(tmp_path, stages), "--model", str(src), "--out", str(tmp_path / "o")]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and match in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.partial*"))


def test_w4a16_export_refused_where_vllm_has_no_kernel(tmp_path, tokenizer, capsys, monkeypatch):
    """On an AVX2-only CPU vLLM has no W4A16 kernel (it would load, then crash at the first forward): the
    export is refused before writing, naming w8a8; --no-verify writes it for another host."""
    from conftest import run_cli

    from slimdeploy.quantize import serving

    monkeypatch.setattr(serving, "cpu_capability", lambda: "AVX2")
    src = _tiny(tmp_path / "src", tokenizer)
    q = tmp_path / "q"
    assert run_cli(["quantize", str(src), "--out", str(q), "--scheme", "w4a16", "--method", "rtn"], capsys)[0] == 0
    code, _, err = run_cli(["export", str(q), "--format", "vllm", "--out", str(tmp_path / "v")], capsys)
    assert code == 1 and "--scheme w8a8" in err and "AVX2" in err and err.count("\n") == 1, err
    assert not (tmp_path / "v").exists()
    code, _, err = run_cli(["export", str(q), "--format", "vllm", "--out", str(tmp_path / "v"), "--no-verify"], capsys)
    assert code == 0, err
