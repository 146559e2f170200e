"""PruneRecord: what each layer kept, relative to the *original* model; the one owner of `pruning.json`.

The record travels beside the model (prune() returns it, PipelineState.record holds it), never on the model:
pruning a pruned model composes (`after` maps the new kept indices through the old ones), and anyone can
check a result against the model it came from. Plans (kept indices in the model's current numbering) are
serialised here too, so a run interrupted between recovery and merge still knows what to slice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slimdeploy.analyze.adapters import decoder_layers, layer_layout
from slimdeploy.prune.plan import LayerPlan, PrunePlan

FILE = "pruning.json"


@dataclass
class PruneRecord:
    original: dict[str, int]
    layers: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def initial(cls, model) -> PruneRecord:
        """What 'nothing removed yet' looks like, relative to this model."""
        cfg = model.config
        original = {
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "intermediate_size": cfg.intermediate_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        layers = [
            {
                "source_layer": i,
                "mlp_keep": list(range(lay.intermediate)),
                "heads_keep": list(range(lay.heads)),
                "kv_keep": list(range(lay.kv_heads)),
            }
            for i, lay in enumerate(layer_layout(layer) for layer in decoder_layers(model))
        ]
        return cls(original, layers)

    def after(self, plan: PrunePlan) -> PruneRecord:
        """The record once `plan` (current numbering) is applied: a new record, this one unchanged."""
        layers = [dict(entry) for entry in self.layers]
        for entry, lp in zip(layers, plan.layers):
            if lp is None:
                continue
            if lp.mlp_keep is not None:
                entry["mlp_keep"] = [entry["mlp_keep"][j] for j in lp.mlp_keep.tolist()]
            if lp.heads_keep is not None:
                assert lp.kv_keep is not None, "a plan that keeps heads names the KV heads too"
                entry["heads_keep"] = [entry["heads_keep"][j] for j in lp.heads_keep.sort().values.tolist()]
                entry["kv_keep"] = [entry["kv_keep"][j] for j in lp.kv_keep.sort().values.tolist()]
        if plan.layers_keep is not None:
            layers = [layers[i] for i in plan.layers_keep]
        return PruneRecord(dict(self.original), layers)

    def to_json(self) -> dict:
        return {"original": self.original, "layers": self.layers}

    def save(self, folder: Path) -> None:
        (Path(folder) / FILE).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, folder: Path) -> PruneRecord | None:
        path = Path(folder) / FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(data["original"], data["layers"])


def record_for(loaded) -> PruneRecord | None:
    """The record saved beside a loaded model folder (None: not pruned by us, or not a folder)."""
    return PruneRecord.load(Path(loaded.source)) if loaded.kind in ("dir", "demo") else None


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(i) for i in t.tolist()]


def _tensor(v: list[int] | None) -> torch.Tensor | None:
    return None if v is None else torch.tensor(v, dtype=torch.long)


def plan_to_json(plan: PrunePlan) -> dict:
    layers = [
        None
        if lp is None
        else {"mlp_keep": _ints(lp.mlp_keep), "heads_keep": _ints(lp.heads_keep), "kv_keep": _ints(lp.kv_keep)}
        for lp in plan.layers
    ]
    return {"layers": layers, "layers_keep": plan.layers_keep, "predicted_params": plan.predicted_params}


def plan_from_json(data: dict) -> PrunePlan:
    layers = [
        None if d is None else LayerPlan(_tensor(d["mlp_keep"]), _tensor(d["heads_keep"]), _tensor(d["kv_keep"]))
        for d in data["layers"]
    ]
    return PrunePlan(layers=layers, layers_keep=data["layers_keep"], predicted_params=data["predicted_params"])
