"""Pruning groups: the minimal structures that can be removed from a decoder layer and leave a dense model.

- "mlp":  MLP channel j = row j of gate_proj and up_proj + column j of down_proj.
- "head": query head h = its head_dim rows of q_proj (and q bias) + its head_dim columns of o_proj.
          Heads are removed in equal numbers from every KV group so the GQA mapping stays regular.
- "kv":   KV group g = k/v rows of KV head g + all query heads that read it (q rows, o columns).
- "layer": a whole decoder layer (depth pruning).

Query head h reads KV head h // q_per_kv (transformers' repeat_kv), so a KV group's heads are contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimdeploy.analyze.adapters import LayerLayout, decoder_layers, layer_layout

KINDS = ("mlp", "head", "kv", "layer")
ROWS, COLS = 0, 1  # which axis of a Linear weight (out_features, in_features) a group occupies


@dataclass(frozen=True)
class Member:
    linear: str  # short name: q k v o gate up down
    axis: int  # ROWS or COLS
    blocks: torch.Tensor  # (n_groups, block) indices along `axis`


def head_blocks(first: int, count: int, head_dim: int) -> torch.Tensor:
    """Index blocks of `count` consecutive heads starting at head `first`: (count, head_dim)."""
    return torch.arange(first * head_dim, (first + count) * head_dim).view(count, head_dim)


def members(kind: str, lay: LayerLayout) -> list[Member]:
    """Which slices of which projections each group of `kind` owns, for one layer."""
    hd, r = lay.head_dim, lay.q_per_kv
    if kind == "mlp":
        idx = torch.arange(lay.intermediate).view(-1, 1)
        return [Member("gate", ROWS, idx), Member("up", ROWS, idx), Member("down", COLS, idx)]
    if kind == "head":
        blocks = head_blocks(0, lay.heads, hd)
        return [Member("q", ROWS, blocks), Member("o", COLS, blocks)]
    if kind == "kv":
        q = head_blocks(0, lay.heads, hd).view(lay.kv_heads, r * hd)
        kv = head_blocks(0, lay.kv_heads, hd)
        return [Member("q", ROWS, q), Member("k", ROWS, kv), Member("v", ROWS, kv), Member("o", COLS, q)]
    raise ValueError(f"unknown group kind {kind!r}; choose from {', '.join(KINDS)}")


def group_params(kind: str, lay: LayerLayout, hidden: int, qkv_bias: bool, mlp_bias: bool = False) -> int:
    """Parameters one group of `kind` holds in a layer with layout `lay`."""
    hd, r = lay.head_dim, lay.q_per_kv
    if kind == "mlp":
        return 3 * hidden + (2 if mlp_bias else 0)
    if kind == "head":
        return 2 * hd * hidden + (hd if qkv_bias else 0)
    if kind == "kv":
        return (2 * r + 2) * hd * hidden + ((r + 2) * hd if qkv_bias else 0)
    raise ValueError(kind)


def layer_params(layer) -> int:
    return sum(p.numel() for p in layer.parameters())


def count_groups(model) -> list[dict]:
    """Per layer: its layout and how many groups of each kind it has (for `inspect --groups`)."""
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        lay = layer_layout(layer)
        out.append(
            {
                "layer": i,
                "mlp": lay.intermediate,
                "head": lay.heads,
                "kv": lay.kv_heads,
                "head_dim": lay.head_dim,
                "params": layer_params(layer),
            }
        )
    return out
