"""Zero-shot accuracy through lm-eval on the in-memory model, reading local task files in hub schemas.

The expected accuracy is computed here independently: for each PIQA document, the log-likelihood of
" " + sol_i after "Question: {goal}\\nAnswer:" (tokens without special tokens, as lm-eval's HF wrapper
encodes them), argmax against the label.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

pytest.importorskip("lm_eval", reason="lm-eval not installed: pip install 'slimdeploy[eval]'")

from slimdeploy.errors import SlimdeployError  # noqa: E402
from slimdeploy.evaluate.zeroshot import check_tasks, zero_shot  # noqa: E402
from slimdeploy.load.tiny import build_tiny_model  # noqa: E402

PIQA = [
    {"goal": f"How do I {verb} a {thing}?", "sol1": f"{verb} it with care", "sol2": f"throw the {thing} away",
     "label": i % 2}
    for i, (verb, thing) in enumerate(
        [(v, t) for v in ("open", "clean", "fix", "paint") for t in ("door", "jar", "bike", "chair")]
    )
]  # fmt: skip
ARC = [
    {"id": str(i), "question": f"Which is {w}?", "choices": {"text": ["a stone", "a cloud", "a tree"],
     "label": ["A", "B", "C"]}, "answerKey": "ABC"[i % 3]}
    for i, w in enumerate(["heavy", "light", "tall", "soft", "hard", "green"])
]  # fmt: skip


@pytest.fixture
def task_dir(tmp_path):
    for name, rows in (("piqa", PIQA), ("arc_easy", ARC)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def _loglik(model, tok, context: str, continuation: str) -> float:
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx) :]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


def test_piqa_accuracy_equals_an_independent_loglikelihood_argmax(task_dir, tokenizer):
    model = build_tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16)
    r = zero_shot(model, tokenizer, ["piqa", "arc_easy"], task_dir, batch_size=4)
    correct = 0
    for d in PIQA:
        scores = [_loglik(model, tokenizer, f"Question: {d['goal']}\nAnswer:", f" {s}") for s in (d["sol1"], d["sol2"])]
        correct += int(max(range(2), key=lambda i: scores[i]) == d["label"])
    assert r["tasks"]["piqa"]["acc"] == pytest.approx(correct / len(PIQA))
    assert r["tasks"]["piqa"]["n"] == 16 and r["tasks"]["arc_easy"]["n"] == 6
    assert r["mean_acc"] == pytest.approx((r["tasks"]["piqa"]["acc"] + r["tasks"]["arc_easy"]["acc"]) / 2)
    assert r["protocol"]["num_fewshot"] == 0 and r["protocol"]["subset"] == "full"


def test_limit_is_a_seeded_subset(task_dir, tokenizer):
    model = build_tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16)
    a = zero_shot(model, tokenizer, ["piqa"], task_dir, limit=5, seed=1)
    b = zero_shot(model, tokenizer, ["piqa"], task_dir, limit=5, seed=1)
    assert a["tasks"]["piqa"]["n"] == 5 and a["tasks"] == b["tasks"]
    assert "seeded sample of 5" in a["protocol"]["subset"]


@pytest.mark.parametrize(
    "tasks,files,limit,expect",
    [
        (["no_such_task"], {}, None, "no task 'no_such_task'"),
        (["piqa"], {}, None, "no piqa.jsonl"),
        (["piqa"], {"piqa.jsonl": '{"question": "q"}\n'}, None, "missing goal"),
        (["hellaswag"], {"hellaswag.jsonl": '{"ctx": "x"}\n'}, None, "missing endings"),
        (["piqa"], {"piqa.jsonl": "not json\n"}, None, "piqa.jsonl:1 is not a JSON object"),
        (["piqa"], {"piqa.jsonl": json.dumps(PIQA[0]) + "\n"}, 0, "--limit 0"),
    ],
)
def test_bad_task_input_is_refused_before_loading(tmp_path, tasks, files, limit, expect):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SlimdeployError, match=expect):
        check_tasks(tasks, tmp_path, limit)


def test_cli_tasks_json(task_dir, tiny_dir, capsys):
    code, out, err = run_cli(
        ["eval", "--model", str(tiny_dir), "--tasks", "piqa", "--task-data", str(task_dir), "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["zero_shot"]["tasks"]["piqa"]["n"] == 16
    code, _, err = run_cli(
        ["eval", "--model", str(tiny_dir), "--tasks", "piqa_x", "--task-data", str(task_dir)], capsys
    )
    assert code == 1 and err.count("\n") == 1 and "no task 'piqa_x'" in err


def test_sliced_head_loglikelihoods_equal_hflm(tokenizer):
    """Scoring only the continuation's positions gives HFLM's own (log-likelihood, is-greedy) per request,
    on requests of mixed lengths, some truncated from the left."""
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    from slimdeploy.evaluate.lm_adapter import SlicedHeadLM
    from slimdeploy.load.tiny import build_tiny_model

    model = build_tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16).eval()
    g = torch.Generator().manual_seed(0)

    def toks(n):
        return torch.randint(1, 8000, (n,), generator=g).tolist()

    requests = [(None, toks(c), toks(k)) for c, k in [(5, 1), (40, 3), (17, 8), (1, 2), (120, 4), (60, 1)]]
    hf = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=64)
    ours = SlicedHeadLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=64)
    want = hf._loglikelihood_tokens(requests, disable_tqdm=True)
    got = ours._loglikelihood_tokens(requests, disable_tqdm=True)
    for (a, ga), (b, gb) in zip(want, got, strict=True):
        assert abs(a - b) < 1e-3 * max(1.0, abs(a)) and ga == gb
    greedy = requests[0][1] + [int(model(torch.tensor([requests[0][1]])).logits[0, -1].argmax())]
    assert ours._loglikelihood_tokens([(None, greedy[:-1], greedy[-1:])], disable_tqdm=True)[0][1] is True
