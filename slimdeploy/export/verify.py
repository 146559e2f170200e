"""Greedy-token comparison between a runtime and transformers: the evidence every export report carries."""

from __future__ import annotations

import torch


@torch.no_grad()
def hf_greedy(model, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        out.append(gen[0, len(p) :].tolist())
    return out


@torch.no_grad()
def top1_agreement(model, prompts: list[list[int]], tokens: list[list[int]], floor: float) -> dict:
    """Teacher-forced on the runtime's own greedy tokens: at how many positions `model`'s next-token argmax
    on the same prefix equals the runtime's token (quantized runtimes cannot match fp32 logits within a float
    tolerance; a stated floor on this fraction is their check)."""
    agree = total = 0
    device = next(model.parameters()).device
    for prompt, got in zip(prompts, tokens, strict=True):
        ids = torch.tensor([prompt + got[:-1]], device=device)
        pred = model(ids).logits[0, len(prompt) - 1 :].argmax(-1).tolist()
        agree += sum(int(a == b) for a, b in zip(pred, got, strict=True))
        total += len(got)
    return {"positions": total, "agreeing": agree, "agreement": agree / max(total, 1), "floor": floor}


def compare_tokens(reference: list[list[int]], candidate: list[list[int]]) -> dict:
    """Per prompt: the length of the common prefix; overall: how many prompts match completely."""
    prefixes = []
    for a, b in zip(reference, candidate, strict=True):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        prefixes.append(n)
    full = sum(1 for p, a in zip(prefixes, reference, strict=True) if p == len(a))
    return {
        "prompts": len(reference),
        "identical": full,
        "common_prefix": prefixes,
        "tokens_per_prompt": len(reference[0]) if reference else 0,
    }


def default_prompts(tokenizer) -> list[list[int]]:
    if tokenizer is None:
        from slimdeploy.errors import SlimdeployError

        raise SlimdeployError(
            "the model has no tokenizer files, so its export cannot be verified; copy tokenizer.json / "
            "tokenizer_config.json from the source model into the folder"
        )
    texts = [
        "def fibonacci(n):\n",
        "import os\nimport sys\n\n",
        "class Stack:\n    def __init__(self):\n",
        "    for i in range(10):\n",
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def verification_line(v: dict | None) -> str:
    """One line for an export report's verification (token identity, or agreement for quantized exports)."""
    if not v:
        return "not verified"
    if "agreement" in v:
        return (
            f"{v['runtime']} ({v['dtype']}) agrees with a simulation of the quantized scheme at "
            f"{v['agreeing']}/{v['positions']} positions (floor {v['floor']:.0%})"
        )
    line = (
        f"greedy tokens identical to transformers for {v['identical']}/{v['prompts']} prompts x "
        f"{v['tokens_per_prompt']} in {v.get('runtime', 'the runtime')} ({v['dtype']})"
    )
    if "top1_agreement" in v:  # int8 / int4 exports: the check is agreement with the fp32 model
        a = v["top1_agreement"]
        line += f"; top-1 agreement with fp32 {a['agreeing']}/{a['positions']} positions (floor {a['floor']:.0%})"
    return line
