"""Distillation from cached top-k teacher logits: the loss from its definition, and a pipeline without the
teacher in memory while training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from slimdeploy.load.tiny import build_tiny_model
from slimdeploy.recover.config import RecoverConfig
from slimdeploy.recover.losses import step_loss
from slimdeploy.recover.teacher_cache import teacher_topk
from slimdeploy.recover.train import attach_lora


def _topk_reference(student, teacher, x, w: float, T: float, k: int) -> torch.Tensor:
    """From the definition on full logits: the teacher's distribution restricted to its k largest logits
    and renormalised, KL against the student's full softmax at those tokens."""
    logits = student(input_ids=x).logits.float()
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    with torch.no_grad():
        t = teacher(input_ids=x).logits.float()
    top, idx = t.topk(k, dim=-1)
    p = torch.softmax(top / T, -1)
    log_s = torch.log_softmax(logits / T, -1).gather(-1, idx)
    kl = (p * (p.log() - log_s)).sum(-1).mean()
    return (1 - w) * ce + w * T * T * kl


@pytest.mark.parametrize("k", [5, 300])  # 300 = the whole vocabulary: the full KL
def test_topk_loss_and_grads_match_the_definition(k):
    teacher = build_tiny_model("llama", seed=1, vocab_size=300)
    cfg = RecoverConfig(rank=4, kd_weight=0.6, kd_temperature=1.5, bf16=False, steps=1, teacher_topk=k)
    student = attach_lora(build_tiny_model("llama", seed=2, vocab_size=300), cfg)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x = torch.randint(1, 300, (3, 11), generator=torch.Generator().manual_seed(0))
    cached = teacher_topk(teacher, x, k)
    assert cached[0].shape == cached[1].shape == (33, k)
    results = []
    for fn in (
        lambda: step_loss(student, x, cfg, teacher_topk=cached),
        lambda: _topk_reference(student, teacher, x, 0.6, 1.5, k),
    ):
        student.zero_grad()
        loss = fn()
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in student.parameters() if p.requires_grad]))
    (ours, g_ours), (ref, g_ref) = results
    assert ours == pytest.approx(ref, rel=1e-5)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if k == 300:  # the full-vocabulary cache is the ordinary distillation loss
        assert ours == pytest.approx(step_loss(student, x, cfg, teacher).item(), rel=1e-5)


RECIPE = """\
name: topk
stages:
  - kind: prune
    ratio: 0.1
    criterion: l2
    round_to: 32
  - kind: recover
    steps: 3
    batch_size: 2
    seq_len: 32
    kd_weight: 0.5
    teacher_topk: 16
  - kind: merge
"""


def test_compress_distils_from_the_cache_without_the_teacher(tmp_path, capsys, monkeypatch):
    import slimdeploy.recover.train as train  # the stage imports recover from here when it runs

    seen = {}
    real = train.recover

    def spy(model, tokenizer, cfg, teacher=None, work_dir=None, *a, **k):
        seen["teacher"], seen["topk_dir"] = teacher, k.get("teacher_topk_dir")
        return real(model, tokenizer, cfg, teacher, work_dir, *a, **k)

    monkeypatch.setattr(train, "recover", spy)
    (tmp_path / "r.yaml").write_text(RECIPE)
    code, _, err = run_cli(["compress", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert seen["teacher"] is None and seen["topk_dir"] is not None
    rec = next(s for s in json.loads((tmp_path / "o" / "report.json").read_text())["stages"] if s["kind"] == "recover")
    assert rec["teacher"]["mode"] == "topk" and rec["teacher"]["k"] == 16 and rec["teacher"]["files"] == 3
    assert rec["teacher"]["bytes"] >= 3 * 2 * 32 * 16 * 8  # values fp32 + indices int32 per token


def test_topk_needs_oneshot_and_fits_the_vocabulary():
    with pytest.raises(ValueError, match="teacher_topk needs mode oneshot"):
        RecoverConfig(mode="loraprune", prune={"ratio": 0.2}, teacher_topk=8)
    from slimdeploy.errors import SlimdeployError

    with pytest.raises(SlimdeployError, match="exceeds the vocabulary"):
        teacher_topk(build_tiny_model("llama", vocab_size=300), torch.ones(1, 4, dtype=torch.long), 301)
