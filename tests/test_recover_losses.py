"""Sliced LM + distillation loss equals the full-logits computation (value and LoRA gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimdeploy.load.tiny import build_tiny_model
from slimdeploy.recover import losses
from slimdeploy.recover.config import RecoverConfig
from slimdeploy.recover.losses import lm_kd_loss, step_loss
from slimdeploy.recover.train import attach_lora


def _reference(student, teacher, x, w: float, T: float) -> torch.Tensor:
    """Written out from the definition on full logits, independent of recover/ code."""
    logits = student(input_ids=x).logits.float()
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    if teacher is None or w == 0:
        return ce
    with torch.no_grad():
        t = teacher(input_ids=x).logits.float()
    p_t = torch.softmax(t / T, -1)
    kl = (p_t * (torch.log_softmax(t / T, -1) - torch.log_softmax(logits / T, -1))).sum(-1).mean()
    return (1 - w) * ce + w * T * T * kl


@pytest.mark.parametrize("w,T", [(0.0, 1.0), (0.5, 1.0), (1.0, 2.0)])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("recompute", [True, False])
def test_sliced_loss_and_grads_equal_full_logits(w, T, tied, recompute, monkeypatch):
    # recompute: slices of logits recomputed in backward (big batches); else the head runs once (small ones)
    monkeypatch.setattr(losses, "RECOMPUTE_ABOVE", 0 if recompute else 1 << 28)
    monkeypatch.setattr(losses, "LOGITS_BUDGET", 300 * 10)  # 10-token slices: several per batch
    teacher = build_tiny_model("qwen2", tied=tied, seed=1, vocab_size=300)
    cfg = RecoverConfig(rank=4, kd_weight=w, kd_temperature=T, bf16=False, steps=1)
    student = attach_lora(build_tiny_model("qwen2", tied=tied, seed=2, vocab_size=300), cfg)
    with torch.no_grad():  # non-zero B so LoRA gradients flow through both paths
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x = torch.randint(1, 300, (3, 11), generator=torch.Generator().manual_seed(0))

    grads = []
    for fn in (lambda: step_loss(student, x, cfg, teacher), lambda: _reference(student, teacher, x, w, T)):
        student.zero_grad()
        loss = fn()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in student.parameters() if p.requires_grad]))
    (ours, g_ours), (ref, g_ref) = grads
    assert ours == pytest.approx(ref, rel=1e-5)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_slices_smaller_than_the_batch_give_the_same_loss():
    model = build_tiny_model("llama", vocab_size=300)
    x = torch.randint(1, 300, (2, 9), generator=torch.Generator().manual_seed(3))
    hidden = model.model(input_ids=x).last_hidden_state
    whole = lm_kd_loss(hidden, model.lm_head, x, 0.7, 1.5, hidden * 0.9, model.lm_head, chunk=10_000)
    sliced = lm_kd_loss(hidden, model.lm_head, x, 0.7, 1.5, hidden * 0.9, model.lm_head, chunk=5)
    assert whole.item() > 0
    assert sliced.item() == pytest.approx(whole.item(), rel=1e-6)


def test_teacher_in_bf16_gives_nearly_the_fp32_loss_with_half_the_memory():
    teacher = build_tiny_model("llama", seed=1, vocab_size=300)
    half = build_tiny_model("llama", seed=1, vocab_size=300).to(torch.bfloat16)
    student = build_tiny_model("llama", seed=2, vocab_size=300)
    cfg = RecoverConfig(kd_weight=1.0, bf16=False, steps=1)
    x = torch.randint(1, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, low = step_loss(student, x, cfg, teacher).item(), step_loss(student, x, cfg, half).item()
    assert low == pytest.approx(full, rel=2e-2) and low != full  # the bf16 teacher really ran
    size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    assert size(half) * 2 == size(teacher)


def test_teacher_device_is_checked_before_any_work(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="teacher_device"):
        RecoverConfig(teacher_device="tpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU refusal cannot be shown here")
    from slimdeploy.errors import SlimdeployError
    from slimdeploy.pipeline.kinds.recover import load_teacher

    with pytest.raises(SlimdeployError, match="no CUDA device here"):
        from slimdeploy.recipe.schema import RecoverStage

        load_teacher(None, RecoverStage(kind="recover", teacher_dtype="bf16", teacher_device="cuda"), "cpu", False)


def test_compress_refuses_a_cuda_teacher_without_a_gpu_in_preflight(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from conftest import run_cli

    args = ["compress", "--recipe", "20pct", "--set", "recover.teacher_device=cuda:0", "--dry-run"]
    code, _, err = run_cli([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "no CUDA device here" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
