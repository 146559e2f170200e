"""The same stages on a CUDA device, compared with the CPU within stated tolerances (skipped without CUDA).

Run by `benchmarks/gpu_check.sh` on a lent GPU machine. Tolerances, and why:
- fp32 on CUDA vs fp32 on CPU: the same kept channels (scores differ in the last bits only) and logits of the
  pruned model within 1e-3 absolute (TF32 is off; kernels sum in other orders);
- bf16 on CUDA: statistics accumulate in fp32, so the plan keeps at least 90% of the same channels, and the
  pruned model's perplexity is within 2% of the fp32 CPU one;
- recovery (bf16 autocast, KD from the dense teacher, 6 steps): final perplexity within 3% of the CPU run;
- merge: merged equals unmerged within 1e-4 (fp32); eval: perplexity within 0.1% of the CPU one.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import run_cli

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (run benchmarks/gpu_check.sh on one)"),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _prune(src, out, criterion, device, dtype, text_file, capsys) -> dict:
    args = ["--json", "prune", "--model", str(src), "--out", str(out), "--criterion", criterion, "--ratio", "0.1"]
    args += ["--round-to", "8", "--n-samples", "8", "--seq-len", "64", "--data", str(text_file)]
    code, stdout, err = run_cli([*args, "--device", device, "--dtype", dtype], capsys)
    assert code == 0, err
    return json.loads(stdout)


def _ppl(model_dir, device, text_file, capsys) -> float:
    args = ["--json", "eval", "--model", str(model_dir), "--data", str(text_file), "--max-tokens", "4000"]
    code, stdout, err = run_cli([*args, "--device", device], capsys)
    assert code == 0, err
    return json.loads(stdout)["ppl"]


def _kept(out) -> dict:
    return json.loads((out / "pruning.json").read_text())


def _overlap(a: dict, b: dict) -> float:
    """Fraction of kept indices the two pruning records share (over every kept list they hold)."""
    same = total = 0

    def walk(x, y):
        nonlocal same, total
        if isinstance(x, dict):
            for k in x:
                walk(x[k], y.get(k) if isinstance(y, dict) else None)
        elif isinstance(x, list) and x and all(isinstance(v, int) for v in x):
            total += len(x)
            same += len(set(x) & set(y or []))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, y[i] if isinstance(y, list) and i < len(y) else None)

    walk(a, b)
    return same / max(total, 1)


@pytest.mark.parametrize("criterion", ["wanda", "surgeon"])
def test_prune_on_cuda_matches_cpu(criterion, tiny_dir, tmp_path, text_file, capsys):
    from slimdeploy.load.model import load_model

    cpu = tmp_path / "cpu"
    _prune(tiny_dir, cpu, criterion, "cpu", "fp32", text_file, capsys)
    gpu = tmp_path / "gpu"
    report = _prune(tiny_dir, gpu, criterion, "cuda", "fp32", text_file, capsys)
    assert report["device"].startswith("cuda")
    assert _overlap(_kept(cpu), _kept(gpu)) == 1.0
    ids = torch.randint(1, 8000, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = load_model(str(cpu)).model(ids).logits
        b = load_model(str(gpu)).model(ids).logits
    assert (a - b).abs().max().item() < 1e-3
    bf16 = tmp_path / "bf16"
    _prune(tiny_dir, bf16, criterion, "cuda", "bf16", text_file, capsys)
    assert _overlap(_kept(cpu), _kept(bf16)) >= 0.9
    p_cpu, p_bf16 = _ppl(cpu, "cpu", text_file, capsys), _ppl(bf16, "cpu", text_file, capsys)
    assert abs(p_bf16 / p_cpu - 1) < 0.02, (p_cpu, p_bf16)


def test_eval_on_cuda_matches_cpu(tiny_dir, text_file, capsys):
    p_cpu, p_gpu = _ppl(tiny_dir, "cpu", text_file, capsys), _ppl(tiny_dir, "cuda", text_file, capsys)
    assert abs(p_gpu / p_cpu - 1) < 1e-3, (p_cpu, p_gpu)


def test_merge_on_cuda_equals_unmerged():
    from peft import LoraConfig, get_peft_model

    from slimdeploy.load.tiny import build_tiny_model

    model = build_tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16).cuda()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)  # B starts at zero: give the adapter something to merge
    ids = torch.randint(1, 8000, (2, 16), device="cuda")
    with torch.no_grad():
        before = peft_model(ids).logits
        merged = peft_model.merge_and_unload()
        after = merged(ids).logits
    assert (before - after).abs().max().item() < 1e-4


def test_recover_with_bf16_autocast_and_kd_on_cuda_matches_cpu(tiny_dir, tmp_path, text_file, capsys):
    stages = [
        {"kind": "prune", "criterion": "wanda", "ratio": 0.1, "round_to": 8, "data": str(text_file), "n_samples": 8},
        {"kind": "recover", "data": str(text_file), "steps": 6, "seq_len": 64, "kd_weight": 0.5, "bf16": True},
        {"kind": "merge"},
        {"kind": "eval", "data": str(text_file), "max_tokens": 4000},
    ]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "stages": stages}))
    ppl = {}
    for device in ("cpu", "cuda"):
        args = ["--json", "compress", "--recipe", str(recipe), "--model", str(tiny_dir), "--device", device]
        code, stdout, err = run_cli([*args, "--out", str(tmp_path / device)], capsys)
        assert code == 0, err
        ppl[device] = list(json.loads(stdout)["summary"]["perplexity"].values())[-1]
    assert abs(ppl["cuda"] / ppl["cpu"] - 1) < 0.03, ppl


def test_torch_bench_on_cuda(tiny_dir, tmp_path, capsys):
    out = tmp_path / "b"
    args = ["bench", "run", str(tiny_dir), "--baseline", str(tiny_dir), "--out", str(out), "--device", "cuda"]
    args += ["--concurrency", "1,2", "--repeats", "2", "--input-len", "16", "--output-len", "8"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads((out / "bench.json").read_text())
    assert report["device"].startswith("cuda") and report["models"]["candidate"]["concurrency"]["2"]
