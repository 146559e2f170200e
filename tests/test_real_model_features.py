"""Pieces a real pretrained model needs: budgets that scale with the model, chat-formatted instruction
recovery, and greedy answers before/after in the report."""

from __future__ import annotations

import json

import yaml

from slimdeploy.recipe.loader import load_recipe
from slimdeploy.recover.data import alpaca_docs, recovery_docs

RECIPE = {
    "name": "r",
    "stages": [{"kind": "prune", "ratio": 0.2, "n_samples": 8}, {"kind": "recover", "steps": 10}, {"kind": "merge"}],
    "real_model": {"prune.n_samples": 64, "recover.steps": 150},
    "real_model_min_params": 1000,
}


def _steps(rec) -> tuple[int, int]:
    return rec.stages[0].n_samples, rec.stages[1].steps


def test_real_model_budgets_apply_above_the_threshold_and_set_wins(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    assert _steps(load_recipe(str(path))[0]) == (8, 10)
    assert _steps(load_recipe(str(path), model_params=999)[0]) == (8, 10)
    assert _steps(load_recipe(str(path), model_params=1001)[0]) == (64, 150)
    assert _steps(load_recipe(str(path), ["recover.steps=5"], model_params=1001)[0]) == (64, 5)


def test_builtin_20pct_scales_for_smollm2_sized_models():
    demo, _ = load_recipe("20pct")
    real, _ = load_recipe("20pct", model_params=134_515_008)
    recover = {r.kind: r for r in real.stages}["recover"]
    assert recover.steps * recover.batch_size * recover.seq_len >= 500_000
    assert {r.kind: r for r in demo.stages}["recover"].steps < recover.steps
    # 3 surgeon shots: SmolLM2 pruned ppl 52.4 -> 38.0 at 20%; on the toy models one shot recovers better
    assert {r.kind: r for r in real.stages}["prune"].shots == 3
    assert {r.kind: r for r in demo.stages}["prune"].shots == 1
    # lr 2e-3: recovered ppl 37.3 vs 40.8 at 5e-4 (same tokens); the teacher in bf16 only where it is native
    assert recover.lr == 2e-3 and recover.teacher_dtype == "auto-bf16"


def test_instruction_data_uses_the_chat_template(tmp_path, tokenizer):
    rows = [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"instruction": "Echo", "input": "hi", "output": "hi"},
    ]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows))
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
    docs, fp = recovery_docs(str(path), "unused {instruction}{input_block}{output}", tokenizer=tokenizer)
    assert docs == [
        "<user>Add 2 and 3.</user><assistant>5</assistant>",
        "<user>Echo\n\nhi</user><assistant>hi</assistant>",
    ]
    assert fp["format"] == "alpaca" and fp["prompt"] == "chat_template"
    off, fp = recovery_docs(
        str(path), "Q:{instruction}{input_block}A:{output}", tokenizer=tokenizer, chat_template="off"
    )
    assert off[0] == "Q:Add 2 and 3.A:5" and off == alpaca_docs(path, "Q:{instruction}{input_block}A:{output}")


def test_report_shows_budgets_and_greedy_answers(tmp_path):
    from slimdeploy.pipeline.report import write_outputs
    from slimdeploy.recipe.schema import Recipe

    samples = [{"prompt": "What is 2+2?", "answer": "4"}]
    stages = [
        {"kind": "load", "source": "m", "params": 100, "bytes": 400, "samples": samples},
        {"kind": "prune", "index": 0, "seconds": 1, "peak_rss_mb": 1, "params": 80, "bytes": 320,
         "calibration": {"n_samples": 64, "seq_len": 512}},
        {"kind": "recover", "index": 1, "seconds": 1, "peak_rss_mb": 1, "params": 80, "bytes": 320, "tokens": 614400},
    ]  # fmt: skip
    (tmp_path / "config.json").write_text("{}")
    rec = Recipe(name="r", stages=[{"kind": "eval"}])
    write_outputs(tmp_path, rec, stages, "m", [{"prompt": "What is 2+2?", "answer": "four"}])
    md = (tmp_path / "report.md").read_text()
    assert "stage 0 (prune) 32,768 tokens" in md and "stage 1 (recover) 614,400 tokens" in md
    assert "| What is 2+2? | 4 | four |" in md
