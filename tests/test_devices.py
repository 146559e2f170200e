"""Devices and dtypes: impossible ones refused in one line before any work; bf16 weights stay bf16 while
statistics accumulate in fp32; the plumbing runs on CPU (this machine has no GPU)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from safetensors import safe_open

from slimdeploy.utils.device import missing_kernel, resolve_device

NO_GPU = not torch.cuda.is_available()


def test_auto_is_cpu_without_a_gpu_and_names_are_checked():
    assert resolve_device("auto") == ("cpu" if NO_GPU else "cuda")
    assert resolve_device("CPU") == "cpu"


@pytest.mark.parametrize(
    "args,match",
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "cuda:x"], "unknown device"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    ]
    + ([(["--device", "cuda"], "no CUDA device"), (["--device", "cuda:1"], "no CUDA device")] if NO_GPU else []),
)
def test_prune_and_eval_refuse_impossible_devices_and_dtypes(args, match, tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["prune", "--model", str(tiny_dir), "--criterion", "l2", "--out", str(out), *args], capsys)
    assert code == 1 and match in err and err.count("\n") == 1, err
    assert not out.exists()
    code, _, err = run_cli(["eval", "--model", str(tiny_dir), *args], capsys)
    assert code == 1 and match in err and err.count("\n") == 1, err
    if "--device" in args:  # the bench's torch backend takes the same device setting
        code, _, err = run_cli(
            ["bench", "run", str(tiny_dir), "--baseline", str(tiny_dir), "--out", str(out), *args], capsys
        )
        assert code == 1 and match in err and err.count("\n") == 1, err
        assert not out.exists()


def test_bench_torch_runs_on_the_device_it_is_given(tiny_dir, tmp_path, capsys):
    out = tmp_path / "b"
    args = ["bench", "run", str(tiny_dir), "--baseline", str(tiny_dir), "--out", str(out), "--device", "auto"]
    code, _, err = run_cli(
        [*args, "--concurrency", "1", "--repeats", "1", "--output-len", "4", "--input-len", "8"], capsys
    )
    assert code == 0, err
    assert json.loads((out / "bench.json").read_text())["device"] == ("cpu" if NO_GPU else "cuda")


def test_bf16_prune_keeps_bf16_weights_sliced_exactly(tiny_dir, tmp_path, capsys, text_file):
    """Weights are not upcast: the saved tensors are bf16 and equal the bf16 source at the kept rows."""
    out = tmp_path / "out"
    args = [
        "prune",
        "--model",
        str(tiny_dir),
        "--criterion",
        "wanda",
        "--data",
        str(text_file),
        "--round-to",
        "8",
        "--ratio",
        "0.05",
    ]
    code, _, err = run_cli([*args, "--n-samples", "4", "--seq-len", "32", "--dtype", "bf16", "--out", str(out)], capsys)
    assert code == 0, err
    report = json.loads((out / "prune_report.json").read_text())
    assert report["dtype"] == "bfloat16" and report["device"] == "cpu"
    record = json.loads((out / "pruning.json").read_text())
    with safe_open(out / "model.safetensors", "pt") as got, safe_open(tiny_dir / "model.safetensors", "pt") as src:
        up = got.get_tensor("model.layers.1.mlp.up_proj.weight")
        src_up = src.get_tensor("model.layers.1.mlp.up_proj.weight").to(torch.bfloat16)
    assert up.dtype == torch.bfloat16 and up.shape[0] < 128  # MLP channels were removed
    assert torch.equal(up, src_up[record["layers"][1]["mlp_keep"]])


def test_statistics_accumulate_in_fp32_from_a_bf16_model():
    from slimdeploy.load.tiny import build_tiny_model
    from slimdeploy.score.stats import layerwise_input_stats

    model = build_tiny_model("llama").to(torch.bfloat16)
    batches = torch.randint(1, 8192, (2, 16), generator=torch.Generator().manual_seed(0))
    stats = layerwise_input_stats(model, batches)
    inp = stats[0].inputs["down"]
    assert inp.sumsq.dtype == torch.float64 and inp.norm.dtype == torch.float32
    assert next(model.parameters()).dtype == torch.bfloat16  # the model itself was not upcast


def test_a_missing_half_kernel_becomes_one_line():
    exc = RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")
    assert missing_kernel(exc) == (
        "torch has no fp16 kernel for addmm_impl_cpu_ on this device; use --dtype fp32 (or bf16 on CPU)"
    )
    assert missing_kernel(RuntimeError("shape mismatch")) is None


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_compress_refuses_cuda_without_a_gpu_before_any_work(tmp_path, capsys):
    for extra in (["--dry-run"], []):
        out = tmp_path / "o"
        code, _, err = run_cli(["compress", "--device", "cuda", "--out", str(out), *extra], capsys)
        assert code == 1 and "no CUDA device" in err and err.count("\n") == 1, err
        assert not out.exists() and not (tmp_path / ".o.partial").exists()


def test_recipe_device_is_typed(tmp_path):
    from pydantic import ValidationError

    from slimdeploy.recipe.schema import Recipe

    with pytest.raises(ValidationError, match="device"):
        Recipe(name="x", device="tpu", stages=[{"kind": "eval"}])
    assert Recipe(name="x", stages=[{"kind": "eval"}]).device == "cpu"


def test_compress_on_device_cpu_runs_the_stages_there(tiny_dir, text_file, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\ndevice: auto\nstages:\n"
        "  - {kind: prune, ratio: 0.05, criterion: l2, round_to: 8}\n"
        f"  - {{kind: recover, steps: 2, batch_size: 2, seq_len: 32, kd_weight: 0.5, data: {text_file}}}\n"
        "  - {kind: merge}\n"
        f"  - {{kind: eval, data: {text_file}, max_tokens: 200, context_length: 64}}\n"
    )
    out = tmp_path / "out"
    code, _, err = run_cli(["compress", "--recipe", str(recipe), "--model", str(tiny_dir), "--out", str(out)], capsys)
    assert code == 0, err
    assert "device: auto" in (out / "recipe.yaml").read_text()


def test_compress_in_bf16_keeps_bf16_and_checks_merge_in_fp32(tmp_path, capsys):
    """`compress --dtype bf16`: every stage works on bf16 weights (saved bf16), LoRA trains on top, and the
    merge check compares fp32 logits with the 16-bit tolerance (merging rounds each weight)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: bf16\nstages:\n  - kind: prune\n    ratio: 0.1\n    criterion: l2\n    round_to: 32\n"
        "  - kind: recover\n    steps: 2\n    batch_size: 2\n    seq_len: 32\n  - kind: merge\n"
    )
    out = tmp_path / "o"
    code, _, err = run_cli(["compress", "--recipe", str(recipe), "--out", str(out), "--dtype", "bf16"], capsys)
    assert code == 0, err
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    report = json.loads((out / "report.json").read_text())
    merge = next(s for s in report["stages"] if s["kind"] == "merge")
    assert merge["atol"] == 2e-2 and 0 <= merge["max_abs_diff"] <= 2e-2 * max(1.0, merge["logit_scale"])
    assert "dtype: bf16" in (out / "recipe.yaml").read_text()
    code, _, err = run_cli(["compress", "--recipe", str(recipe), "--out", str(out), "--dtype", "fp8"], capsys)
    assert code == 1 and "unknown dtype 'fp8'" in err and err.count("\n") == 1, err


def test_lora_weights_stay_fp32_on_a_bf16_base():
    from slimdeploy.load.tiny import build_tiny_model
    from slimdeploy.recover.config import RecoverConfig
    from slimdeploy.recover.train import attach_lora

    peft_model = attach_lora(build_tiny_model("llama").to(torch.bfloat16), RecoverConfig(rank=4, steps=1))
    params = dict(peft_model.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" in n} == {torch.float32}  # optimizer state in fp32
    assert {p.dtype for n, p in params.items() if "lora_" not in n} == {torch.bfloat16}  # the base is not upcast
