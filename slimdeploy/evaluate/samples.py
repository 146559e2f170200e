"""Greedy answers to fixed prompts, before and after compression: what a reader checks first.

Chat models are asked through their own chat template (a chat model must stay a chat model); other models
complete the same questions as plain "Question: ...\\nAnswer:" text.
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


def prompt_ids(tokenizer, question: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(f"Question: {question}\nAnswer:")["input_ids"]


@torch.no_grad()
def greedy_answers(model, tokenizer, max_new_tokens: int = 40) -> list[dict]:
    """[{prompt, answer}] for PROMPTS, greedy, stopping at EOS; empty when the model has no tokenizer."""
    if tokenizer is None:
        return []
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    out = []
    for question in PROMPTS:
        ids = torch.tensor([prompt_ids(tokenizer, question)], device=device)
        gen = model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos if eos else 0
        )
        answer = tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip()
        out.append({"prompt": question, "answer": answer})
    return out
