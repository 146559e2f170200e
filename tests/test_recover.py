"""LoRA recovery: loss goes down, merged equals unmerged, interrupted runs resume exactly, bad input refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from slimdeploy.errors import SlimdeployError
from slimdeploy.load.tiny import build_tiny_model
from slimdeploy.merge.api import merge
from slimdeploy.prune.apply import apply_plan
from slimdeploy.recover.config import RecoverConfig
from slimdeploy.recover.train import recover


def _cfg(text_file, **kw):
    base = dict(data=str(text_file), steps=12, batch_size=2, seq_len=32, lr=3e-3, rank=4, warmup=2, ckpt_every=4)
    base.update(kw)
    return RecoverConfig(**base)


def test_loss_decreases_and_merge_is_exact(text_file, tokenizer):
    model = build_tiny_model("qwen2")
    cfg = _cfg(text_file, steps=30, batch_size=1, seed=1)
    res = recover(model, tokenizer, cfg)
    losses = [h["loss"] for h in res.report["history"]]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    probe = torch.arange(1, 33)[None]
    with torch.no_grad():  # the adapter model's own output and one projection folded by hand, before merge
        want = res.model(input_ids=probe).logits.float()
        q = res.model.base_model.model.model.layers[0].self_attn.q_proj
        by_hand = q.base_layer.weight + (cfg.alpha / cfg.rank) * q.lora_B["default"].weight @ q.lora_A["default"].weight
    assert not torch.allclose(by_hand, q.base_layer.weight)  # the adapter learned something to fold in
    merged, _ = merge(res.model, probe)
    with torch.no_grad():
        got = merged(input_ids=probe).logits.float()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * max(1.0, want.abs().max().item()))
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, by_hand, rtol=0, atol=1e-6)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_distillation_uses_the_teacher(text_file, tokenizer):
    """kd_weight 1: the first step's loss is KL(teacher || student) on the first batch, computed here from
    the definition (LoRA B starts at zero, so the student is still the base model at that step)."""
    from slimdeploy.recover.data import DataMixture

    teacher = build_tiny_model("llama", seed=5)
    student = build_tiny_model("llama", seed=6)
    cfg = _cfg(text_file, kd_weight=1.0, kd_temperature=2.0, steps=3, bf16=False)
    x = DataMixture.build(tokenizer, cfg).batch(0, 0, cfg)
    with torch.no_grad():
        t = torch.log_softmax(teacher(input_ids=x).logits.float() / 2, -1)
        s = torch.log_softmax(student(input_ids=x).logits.float() / 2, -1)
    want = 4 * (t.exp() * (t - s)).sum(-1).mean().item()
    rep = recover(student, tokenizer, cfg, teacher=teacher).report
    assert rep["history"][0]["loss"] == pytest.approx(want, rel=1e-4)
    other = recover(build_tiny_model("llama", seed=6), tokenizer, cfg, teacher=build_tiny_model("llama", seed=9))
    assert other.report["history"][0]["loss"] != pytest.approx(want, rel=1e-2)  # another teacher, another loss


def test_merged_model_saves_and_reloads(text_file, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    peft_model = recover(build_tiny_model("llama"), tokenizer, _cfg(text_file, steps=3)).model
    merged, _ = merge(peft_model, torch.arange(1, 17)[None])
    merged.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    x = torch.arange(5, 25)[None]
    with torch.no_grad():
        assert torch.allclose(again(input_ids=x).logits, merged(input_ids=x).logits, atol=1e-6)


RESUME_SCRIPT = r"""
import json, os, sys, torch
from pathlib import Path
from transformers import AutoTokenizer
from slimdeploy.load.model import demo_model_dir
from slimdeploy.load.tiny import build_tiny_model
from slimdeploy.recover.config import RecoverConfig
from slimdeploy.recover.train import recover
torch.set_num_threads(1)
work, text, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = RecoverConfig(data=text, steps=12, batch_size=2, seq_len=32, lr=3e-3, rank=4, warmup=2, ckpt_every=4)
def on_step(model, step):
    if step == kill_at:
        os.kill(os.getpid(), 9)  # like kill -9: no cleanup at all
tok = AutoTokenizer.from_pretrained(demo_model_dir())
pm = recover(build_tiny_model("llama"), tok, cfg, work_dir=work, on_step=on_step).model
torch.save({n: p.detach() for n, p in pm.named_parameters() if "lora" in n}, work / "final.pt")
"""


def test_kill_9_then_resume_matches_uninterrupted(tmp_path, text_file):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()

    def run(work, kill):
        args = [sys.executable, str(script), str(work), str(text_file), str(kill)]
        return subprocess.run(args, capture_output=True, text=True)

    assert run(straight, -1).returncode == 0
    killed = run(resumed, 6)  # dies after step 6; last checkpoint at step 4
    assert killed.returncode == -9
    assert not (resumed / "final.pt").exists()
    ok = run(resumed, -1)
    assert ok.returncode == 0, ok.stderr[-2000:]
    a = torch.load(straight / "final.pt", weights_only=True)
    b = torch.load(resumed / "final.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("bad", [{"steps": 0}, {"lr": 0}, {"lr": -1e-3}, {"rank": 0}, {"unknown": 1}])
def test_bad_config(bad, text_file):
    with pytest.raises(ValidationError):
        _cfg(text_file, **bad)


def test_lora_targets_that_match_nothing(text_file, tokenizer):
    with pytest.raises(SlimdeployError, match="match no module"):
        recover(build_tiny_model("llama"), tokenizer, _cfg(text_file, targets=["c_attn"]))


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "not valid JSON"),
        ("[]", "non-empty"),
        ('{"a": 1}', "non-empty"),
        ('[{"instruction": 3}]', "record 0"),
        ("[{", "not valid JSON"),
    ],
)
def test_bad_instruction_json(tmp_path, tokenizer, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SlimdeployError, match=match):
        recover(build_tiny_model("llama"), tokenizer, _cfg(path))


def test_alpaca_json_recovery(tmp_path, tokenizer):
    rows = [{"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}"} for i in range(200)]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    rep = recover(build_tiny_model("llama"), tokenizer, _cfg(path, steps=2)).report
    assert rep["data"]["format"] == "alpaca" and rep["blocks"] > 0


def _wide():
    return build_tiny_model(
        "llama",
        hidden_size=128,
        num_attention_heads=8,
        head_dim=16,
        intermediate_size=256,
        num_hidden_layers=4,
        vocab_size=8192,
        tied=True,
    )


@pytest.mark.parametrize("mode", ["loraprune", "lorashear"])
def test_pruning_while_training_then_merge_slices(mode, text_file, tokenizer):
    model = _wide()
    p0 = sum(p.numel() for p in model.parameters())
    cfg = _cfg(
        text_file,
        steps=12,
        mode=mode,
        update_every=2,
        periods=3,
        prune={"ratio": 0.1, "round_to": 16, "structures": ["mlp", "head"]},
    )
    res = recover(model, tokenizer, cfg)
    assert res.report["pruning_schedule"], "no mask update happened"
    plan = res.pending_plan
    layer0 = res.model.base_model.model.model.layers[0]
    hd = 16
    removed = sorted(set(range(8)) - set(plan.layers[0].heads_keep.tolist()))
    assert removed, "the plan removes no head of layer 0"
    for h in removed:  # the masks were written into the weights: removed heads' o_proj inputs read zeros
        assert not layer0.self_attn.o_proj.base_layer.weight[:, h * hd : (h + 1) * hd].any()
    probe = torch.arange(1, 33)[None]
    with torch.no_grad():
        want = res.model(input_ids=probe).logits.float()  # no mask hooks remain: the weights alone compute this
    merged, _ = merge(res.model, probe)
    apply_plan(merged, plan)
    with torch.no_grad():
        got = merged(input_ids=probe).logits.float()
    p1 = sum(p.numel() for p in merged.parameters())
    assert abs((p0 - p1) / p0 - 0.1) < 0.02
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_loraprune_sparsity_follows_cubic_schedule(text_file, tokenizer):
    cfg = _cfg(
        text_file, steps=10, mode="loraprune", update_every=2, prune_fraction=0.8, prune={"ratio": 0.1, "round_to": 16}
    )
    rep = recover(_wide(), tokenizer, cfg).report
    got = [h["sparsity"] for h in rep["pruning_schedule"]]
    # s_t = 0.1 (1 - (1 - t / 8)^3) at t = 2, 4, 6, 8, worked out by hand
    assert got == [0.0578, 0.0875, 0.0984, 0.1]
    params = [h["params_if_sliced"] for h in rep["pruning_schedule"]]
    assert params == sorted(params, reverse=True) and params[0] > params[-1]


def test_dynamic_data_adaptor_reweights(text_file, tokenizer, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("the cat sat on the mat. " * 400)
    cfg = _cfg(
        text_file,
        steps=9,
        mode="lorashear",
        periods=3,
        prune_fraction=1.0,  # periods end at steps 3 and 6 (merge + re-weight); the last one ends the run
        data=[str(text_file), str(other)],
        prune={"ratio": 0.1, "round_to": 16},
    )
    rep = recover(_wide(), tokenizer, cfg).report
    weights = [h["data_weights"] for h in rep["pruning_schedule"]]
    assert len(weights) == 2 and all(abs(sum(w) - 1) < 1e-3 for w in weights)
    assert rep["data_weights"] != [0.5, 0.5]


def test_data_adaptor_weights_follow_the_perplexity_ratio(text_file, tokenizer, tmp_path, monkeypatch):
    """LoRAShear's adaptor: weight_i proportional to exp(loss_now_i - loss_dense_i), here from given losses."""
    import math

    from slimdeploy.recover.data import DataMixture

    other = tmp_path / "other.txt"
    other.write_text("the cat sat on the mat. " * 400)
    cfg = _cfg(text_file, data=[str(text_file), str(other)])
    mix = DataMixture.build(tokenizer, cfg)
    mix.dense_loss = [2.0, 3.0]
    monkeypatch.setattr(mix, "_losses", lambda model, cfg: [2.5, 3.1])
    a, b = math.exp(0.5), math.exp(0.1)
    assert mix.adapt(None, cfg) == [round(a / (a + b), 4), round(b / (a + b), 4)]


def test_lorashear_prunes_then_recovers(text_file, tokenizer):
    """Periods fill the first prune_fraction of the steps; the rest only recovers (no mask changes)."""
    cfg = _cfg(
        text_file, steps=12, mode="lorashear", periods=2, prune_fraction=0.5, prune={"ratio": 0.1, "round_to": 16}
    )
    rep = recover(_wide(), tokenizer, cfg).report
    assert [h["step"] for h in rep["pruning_schedule"]] == [3, 6]


def test_prune_block_needs_a_mode(text_file):
    with pytest.raises(Exception, match="needs mode"):
        _cfg(text_file, prune={"ratio": 0.2})
    with pytest.raises(Exception, match="needs a `prune` block"):
        _cfg(text_file, mode="loraprune")
