"""The demo model's card: data, budget, held-out perplexity (and a random-init reference), licence."""

from __future__ import annotations

import json
from pathlib import Path


def finalize_demo(model_dir: Path, max_tokens: int | None = None) -> dict:
    """Measure the trained demo model and write its README.md (model card) and card.json."""
    import torch
    from transformers import AutoModelForCausalLM

    from slimdeploy.evaluate.api import evaluate_loaded
    from slimdeploy.export.verify import hf_greedy
    from slimdeploy.load.model import load_model

    loaded = load_model(str(model_dir), "fp32")
    trained = evaluate_loaded(loaded.model, loaded.tokenizer, None, {}, max_tokens)
    torch.manual_seed(0)
    random_model = AutoModelForCausalLM.from_config(loaded.model.config, dtype=torch.float32).eval()
    random = evaluate_loaded(random_model, loaded.tokenizer, None, {}, 50_000)  # a reference: 50k tokens do
    prompt = "class Stack:\n    def __init__(self):\n        self"
    ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sample = prompt + loaded.tokenizer.decode(hf_greedy(loaded.model, [ids], 64)[0])
    summary = json.loads((model_dir / "training_summary.json").read_text())
    card = {
        "heldout": {k: trained[k] for k in ("tokens_scored", "nll", "ppl", "protocol")},
        "random_init_ppl": random["ppl"],
        "corpus": summary["corpus"],
        "tokens_seen": summary["tokens_seen"],
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "sample": sample,
    }
    (model_dir / "card.json").write_text(json.dumps(card, indent=1))
    cfg = summary["config"]
    text = f"""# slimdeploy-demo

A small Llama-architecture causal LM trained from scratch by `slimdeploy zoo train-demo`, shipped inside
the slimdeploy package as the default model for `slimdeploy compress`, so the tool runs offline anywhere on
a model that has really learned something.

- Architecture: Llama, {cfg["num_layers"]} layers, hidden {cfg["hidden_size"]}, {cfg["num_heads"]} query heads /
  {cfg["num_kv_heads"]} KV heads (GQA), head_dim {cfg["head_dim"]}, SwiGLU {cfg["intermediate_size"]}, tied embeddings,
  {card["parameters"]:,} parameters, stored in bf16 (safetensors).
- Tokenizer: byte-level BPE, {cfg["vocab_size"]} tokens, trained on the same corpus; `<|endoftext|>` is BOS, EOS
  and padding.
- Data: the `.py` sources of the Python {card["corpus"]["python"]} standard library (PSF licence), split by a
  hash of each file's path: train {card["corpus"]["train"]["files"]} files, calibration
  {card["corpus"]["calibration"]["files"]}, held-out eval {card["corpus"]["eval"]["files"]} (fingerprints in card.json).
- Training: {cfg["steps"]} AdamW steps x {cfg["batch_size"]} x {cfg["seq_len"]} tokens ({summary["tokens_seen"]:,}
  tokens), lr {cfg["lr"]} cosine to {cfg["min_lr"]}, bf16 autocast, 2 CPU cores, seed {cfg["seed"]}.
- Held-out perplexity (slimdeploy eval default protocol: context {trained["protocol"]["context_length"]},
  stride {trained["protocol"]["stride"]}, BOS before each file): **{trained["ppl"]:.3f}** over
  {trained["tokens_scored"]:,} tokens; a random-initialised model of the same shape: {random["ppl"]:.1f}.
- Licence: the weights are released under Apache-2.0 (slimdeploy's licence); the training text is PSF-licensed.

Greedy sample:

```python
{sample}
```
"""
    (model_dir / "README.md").write_text(text)
    return card
