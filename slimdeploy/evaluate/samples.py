"""Greedy answers to fixed prompts, before and after compression: what a reader checks first.

Prompts fit the model: chat models are asked through their own chat template (a chat model must stay a chat
model); the embedded demo, trained on Python source only, continues code; other models complete the
questions as plain "Question: ...\\nAnswer:" text.
"""

from __future__ import annotations

import torch

PROMPTS = (
    "What is the capital of France?",
    "Give three tips for staying healthy.",
    "Write a Python function that returns the square of a number.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue? Answer in one sentence.",
)


# what the code-trained demo model can continue (questions in English give it nothing to complete)
CODE_PROMPTS = (
    "def fibonacci(n):\n",
    "class Stack:\n    def __init__(self):\n",
    "import json\n\n\ndef load_config(path):\n",
    "    for i in range(10):\n",
    "def is_prime(n):\n    if n < 2:\n",
)


def prompt_style(tokenizer, source: str | None = None) -> str:
    """chat | code | question: how the sample prompts are put to this model."""
    if getattr(tokenizer, "chat_template", None):
        return "chat"
    if source is not None:
        from pathlib import Path

        from slimdeploy.load.model import demo_model_dir

        if Path(source).resolve() == demo_model_dir().resolve():
            return "code"
    return "question"


def prompt_ids(tokenizer, question: str, style: str | None = None) -> list[int]:
    style = style or prompt_style(tokenizer)
    if style == "code":
        return tokenizer(question)["input_ids"]
    if style == "chat":
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(f"Question: {question}\nAnswer:")["input_ids"]


@torch.no_grad()
def greedy_answers(model, tokenizer, max_new_tokens: int = 40, source: str | None = None) -> list[dict]:
    """[{prompt, answer}] for the prompts that fit the model (`source`: where it was loaded from), greedy,
    stopping at EOS; empty when the model has no tokenizer."""
    if tokenizer is None:
        return []
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    style = prompt_style(tokenizer, source)
    out = []
    for question in CODE_PROMPTS if style == "code" else PROMPTS:
        ids = torch.tensor([prompt_ids(tokenizer, question, style)], device=device)
        gen = model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos if eos else 0
        )
        answer = tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip()
        out.append({"prompt": question, "answer": answer})
    return out
