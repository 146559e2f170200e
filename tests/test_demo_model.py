"""The embedded demo model: loads with plain from_pretrained, has learned (held-out ppl <= 1/10 of a random
model of the same shape), and vLLM on CPU gives the same greedy tokens as transformers."""

from __future__ import annotations

import pytest
import torch

from slimdeploy.export.vllm_runner import vllm_available
from slimdeploy.load.model import demo_model_dir

DEMO = demo_model_dir()
pytestmark = pytest.mark.skipif(not (DEMO / "model.safetensors").exists(), reason="demo weights not built")


def test_loads_with_from_pretrained():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO)
    tok = AutoTokenizer.from_pretrained(DEMO)
    cfg = model.config
    assert cfg.head_dim == 64 and cfg.num_key_value_heads < cfg.num_attention_heads
    assert 8e6 <= sum(p.numel() for p in model.parameters()) <= 20e6
    assert (DEMO / "model.safetensors").stat().st_size <= 40e6
    assert tok.decode(tok("x = 1\n")["input_ids"]) == "x = 1\n"


def test_learned_something():
    from transformers import AutoModelForCausalLM

    from slimdeploy.evaluate.api import evaluate_loaded
    from slimdeploy.load.model import load_model

    loaded = load_model(None, "fp32")
    trained = evaluate_loaded(loaded.model, loaded.tokenizer, None, {}, max_tokens=8000)
    torch.manual_seed(0)
    random = AutoModelForCausalLM.from_config(loaded.model.config, dtype=torch.float32).eval()
    baseline = evaluate_loaded(random, loaded.tokenizer, None, {}, max_tokens=8000)
    assert trained["ppl"] <= baseline["ppl"] / 10, (trained["ppl"], baseline["ppl"])


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed (pip install 'slimdeploy[cpu]')")
def test_vllm_greedy_equals_transformers():
    from slimdeploy.export.verify import compare_tokens, default_prompts, hf_greedy
    from slimdeploy.export.vllm_runner import vllm_greedy
    from slimdeploy.load.model import load_model

    loaded = load_model(None, "fp32")
    prompts = default_prompts(loaded.tokenizer)
    got = vllm_greedy(DEMO, prompts, 16, dtype="float32")
    result = compare_tokens(hf_greedy(loaded.model, prompts, 16), got)
    assert result["identical"] == result["prompts"] == 4, result


def test_sample_prompts_fit_the_model(tokenizer):
    """The code-trained demo continues code; a chat model is asked through its chat template; others get
    plain questions (report.md's "greedy answers" once asked the demo chat questions: '# # # ...')."""
    from slimdeploy.evaluate.samples import greedy_answers, prompt_style
    from slimdeploy.load.model import demo_model_dir, load_model

    demo = load_model(None)
    assert prompt_style(demo.tokenizer, demo.source) == "code"
    answers = greedy_answers(demo.model, demo.tokenizer, max_new_tokens=12, source=str(demo_model_dir()))
    assert answers[0]["prompt"].startswith("def fibonacci") and answers[0]["answer"].strip()
    assert prompt_style(demo.tokenizer, "/elsewhere") == "question"
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert prompt_style(tokenizer, demo.source) == "chat"
