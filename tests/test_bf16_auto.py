"""bf16 autocast where the device computes bf16 natively, fp32 elsewhere: emulated bf16 made LoRA recovery
on an AVX2-only CPU run at 5 tokens/s. The device probes are patched, so both answers are tested anywhere."""

from __future__ import annotations

import pytest
import torch

from slimdeploy.load.tiny import build_tiny_model
from slimdeploy.recover.config import RecoverConfig
from slimdeploy.recover.train import recover
from slimdeploy.utils import device as dev


@pytest.mark.parametrize(("amx", "avx512_bf16"), [(False, False), (True, False), (False, True)])
def test_native_bf16_reads_the_cpu_probes(monkeypatch, amx, avx512_bf16):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert dev.native_bf16("cpu") is (amx or avx512_bf16)
    assert dev.resolve_bf16("auto", "cpu") is (amx or avx512_bf16)
    assert dev.resolve_bf16(True, "cpu") is True and dev.resolve_bf16(False, "cpu") is False


def test_native_bf16_without_the_probes_is_false(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert dev.native_bf16("cpu") is False


def _losses(text_file, tokenizer, bf16) -> tuple[list[float], bool]:
    cfg = RecoverConfig(data=str(text_file), steps=3, batch_size=2, seq_len=32, lr=3e-3, rank=4, warmup=0, bf16=bf16)
    rep = recover(build_tiny_model("llama", seed=3), tokenizer, cfg).report
    return [h["loss"] for h in rep["history"]], rep["bf16_autocast"]


def test_recovery_autocasts_only_where_bf16_is_native(monkeypatch, text_file, tokenizer):
    fp32, _ = _losses(text_file, tokenizer, False)
    bf16, _ = _losses(text_file, tokenizer, True)
    assert fp32 != bf16  # the two precisions are distinguishable on this model
    monkeypatch.setattr(dev, "native_bf16", lambda device: False)
    assert _losses(text_file, tokenizer, "auto") == (fp32, False)
    monkeypatch.setattr(dev, "native_bf16", lambda device: True)
    assert _losses(text_file, tokenizer, "auto") == (bf16, True)


def test_teacher_auto_bf16_follows_the_device(monkeypatch, tmp_path):
    from slimdeploy.pipeline.kinds import recover
    from slimdeploy.recipe.schema import RecoverStage
    from slimdeploy.utils import device

    build_tiny_model("llama").save_pretrained(tmp_path / "m")
    stage = RecoverStage(kind="recover", kd_weight=0.5, teacher_dtype="auto-bf16")
    for native, want in [(True, torch.bfloat16), (False, torch.float32)]:
        monkeypatch.setattr(device, "native_bf16", lambda where, n=native: n)
        teacher = recover.load_teacher(str(tmp_path / "m"), stage, "cpu", False)
        assert next(teacher.parameters()).dtype == want
