"""Contracts the pipeline relies on: deterministic scores, groups that partition each layer, registries that
name what they know, and a README recipe table that matches recipes/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from slimdeploy.analyze.adapters import decoder_layers, layer_layout, linears
from slimdeploy.analyze.groups import COLS, members
from slimdeploy.errors import SlimdeployError
from slimdeploy.load.tiny import FAMILIES, build_tiny_model
from slimdeploy.score.api import score
from slimdeploy.score.registry import criterion_names, get_criterion

ROOT = Path(__file__).resolve().parent.parent


def _model():
    return build_tiny_model(
        "llama", hidden_size=64, num_attention_heads=8, head_dim=8, intermediate_size=64, vocab_size=256
    )


@pytest.mark.parametrize("criterion", criterion_names())
def test_scores_are_deterministic_for_a_fixed_seed(criterion):
    batches = torch.randint(1, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    runs = [score(_model(), criterion, batches, seed=3, need_layers=True) for _ in range(2)]
    for a, b in zip(runs[0].per_layer, runs[1].per_layer):
        for kind in a:
            assert torch.equal(a[kind], b[kind]), (criterion, kind)
    assert torch.equal(runs[0].layer, runs[1].layer)
    if criterion == "random":  # and the seed matters
        other = score(_model(), criterion, batches, seed=4)
        assert not torch.equal(other.per_layer[0]["mlp"], runs[0].per_layer[0]["mlp"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["mlp", "head", "kv"])
def test_groups_are_disjoint_and_cover_every_prunable_row(family, kind):
    """Each member's blocks partition its projection's rows (or columns): every index in exactly one group."""
    layer = decoder_layers(build_tiny_model(family))[0]
    lay, lins = layer_layout(layer), linears(layer)
    n_groups = {"mlp": lay.intermediate, "head": lay.heads, "kv": lay.kv_heads}[kind]
    for mem in members(kind, lay):
        weight = lins[mem.linear].weight
        size = weight.shape[1] if mem.axis == COLS else weight.shape[0]
        flat = mem.blocks.flatten().tolist()
        assert mem.blocks.shape[0] == n_groups, (kind, mem.linear)
        assert sorted(flat) == list(range(size)), f"{kind}/{mem.linear}: blocks must cover 0..{size - 1} once"


def test_unknown_criterion_names_the_known_ones():
    with pytest.raises(SlimdeployError, match="choose one of random, l1, l2, wanda"):
        get_criterion("magnitude")


def test_a_registered_criterion_is_used_by_prune():
    """The registry is the dispatch: a criterion registered from outside is validated and called."""
    from slimdeploy.prune.api import PruneConfig, prune
    from slimdeploy.score import registry

    calls = []

    @registry.register_criterion("first_rows", needs_data=False)
    def first_rows(inp):
        calls.append(len(inp.layouts))
        return [
            {
                k: -torch.arange(n, dtype=torch.float64)
                for k, n in (("mlp", L.intermediate), ("head", L.heads), ("kv", L.kv_heads))
            }
            for L in inp.layouts
        ]

    try:
        model = _model()
        prune(model, PruneConfig(ratio=0.2, criterion="first_rows", structures=["mlp"], round_to=8), None)
        assert calls == [3]
        assert model.model.layers[0].mlp.up_proj.weight.shape[0] < 64
    finally:
        registry._REGISTRY.pop("first_rows")


def test_unknown_export_format_names_the_known_ones():
    from slimdeploy.export.registry import get_exporter

    with pytest.raises(SlimdeployError, match="choose one of vllm, onnx, ort-genai"):
        get_exporter("tensorrt")


def test_readme_recipe_table_matches_recipes_folder():
    import yaml

    text = (ROOT / "README.md").read_text()
    table = text.split("## Recipes", 1)[1].split("\n\n", 2)[1]
    rows = dict(re.findall(r"^\| `([\w-]+)` \| (.+?) \|$", table, flags=re.M))
    files = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "recipes").glob("*.yaml")}
    assert set(rows) == set(files), "README's recipe table and recipes/ list different recipes"
    for name, data in files.items():
        ratios = [s["ratio"] for s in data["stages"] if s["kind"] == "prune"]
        ratios += [s["prune"]["ratio"] for s in data["stages"] if s["kind"] == "recover" and s.get("prune")]
        stated = re.search(r"(\d+)%", rows[name])
        if stated:
            assert round(100 * sum(ratios)) == int(stated.group(1)), f"{name}: README says {stated.group(0)}"


@pytest.mark.parametrize(
    "script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
)
def test_every_benchmark_script_explains_itself(script):
    """`--help` runs (argparse %-formats help strings: a bare '20%' once broke one) and names its purpose."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-500:]
