"""`inspect --groups`: the prunable groups of every layer, their sizes and (given data) their scores."""

from __future__ import annotations

from typing import Any

from slimdeploy.analyze.adapters import decoder_layers, family_of, layer_layout
from slimdeploy.analyze.groups import count_groups, group_params


def describe_groups(loaded, data: str | None, criterion: str) -> dict:
    model = loaded.model
    fam = family_of(model)
    hidden = model.config.hidden_size
    lay0 = layer_layout(decoder_layers(model)[0])
    out: dict[str, Any] = {
        "family": fam.model_type,
        "params_per_group": {k: group_params(k, lay0, hidden, fam.qkv_bias) for k in ("mlp", "head", "kv")},
        "layers": count_groups(model),
    }
    if data:
        from slimdeploy.load.data import calibration_data
        from slimdeploy.score.api import score

        batches, fp = calibration_data(loaded.tokenizer, data, 16, 128)
        scores = score(model, criterion, batches, need_layers=True)
        out["criterion"], out["calibration"] = criterion, fp
        for i, row in enumerate(out["layers"]):
            for kind, s in scores.per_layer[i].items():
                row[f"{kind}_scores"] = {"min": float(s.min()), "median": float(s.median()), "max": float(s.max())}
            if scores.layer is not None:
                row["layer_score"] = float(scores.layer[i])
    return out


def print_groups(g: dict) -> None:
    p = g["params_per_group"]
    print(
        f"  prunable groups ({g['family']}): MLP channel = {p['mlp']:,} params, query head = {p['head']:,}, "
        f"KV group = {p['kv']:,}; whole layers"
    )
    for row in g["layers"]:
        line = f"    layer {row['layer']:>2}: {row['mlp']} channels, {row['head']} heads, {row['kv']} KV groups"
        if "mlp_scores" in row:
            line += "; median score mlp {:.3g} head {:.3g} kv {:.3g}".format(
                row["mlp_scores"]["median"], row["head_scores"]["median"], row["kv_scores"]["median"]
            )
        if "layer_score" in row:
            line += f"; layer {row['layer_score']:.3g}"
        print(line)
