"""DeciLM / "nemotron-nas" config written by slimdeploy: a Llama config plus per-layer `block_configs`.

Each block says whether the layer keeps attention (and with how many query heads per KV head,
`n_heads_in_group`) and an MLP (with its `intermediate_size`). vLLM's DeciLMForCausalLM reads the
blocks as attributes (`block.attention.no_op`), so they are turned into small objects here and back into
dicts when saved.
"""

from __future__ import annotations

from types import SimpleNamespace

from transformers import LlamaConfig


def _as_block(block) -> SimpleNamespace:
    if isinstance(block, SimpleNamespace):
        return block
    attention = dict(block.get("attention", {}))
    ffn = dict(block.get("ffn", {}))
    attention.setdefault("no_op", False)
    attention.setdefault("replace_with_linear", False)
    ffn.setdefault("no_op", False)
    ffn.setdefault("replace_with_linear", False)
    return SimpleNamespace(attention=SimpleNamespace(**attention), ffn=SimpleNamespace(**ffn))


def _as_dict(block: SimpleNamespace) -> dict:
    return {"attention": vars(block.attention).copy(), "ffn": vars(block.ffn).copy()}


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        self.block_configs = [_as_block(b) for b in (block_configs or [])]
        super().__init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        out["block_configs"] = [_as_dict(b) for b in self.block_configs]
        return out
