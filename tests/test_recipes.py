"""Recipes: every file under recipes/ validates; typos fail before any weights load, naming key and line;
every built-in recipe runs end to end on a tiny model with short budgets; report fields recompute."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, run_cli

from slimdeploy.errors import SlimdeployError
from slimdeploy.recipe.loader import builtin_recipes, load_recipe

RECIPE_FILES = sorted((ROOT / "recipes").rglob("*.yaml"))


def test_recipes_exist():
    assert RECIPE_FILES, "no recipe found under recipes/"


def test_wheels_carry_every_builtin_recipe():
    """Wheels install recipes/ through pyproject data-files (<prefix>/share/slimdeploy/recipes), flat: the globs
    must match every built-in recipe, or `--recipe NAME` would work from a checkout and fail after pip install."""
    import fnmatch
    import tomllib

    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    globs = data_files["share/slimdeploy/recipes"]
    for path in builtin_recipes().values():
        rel = path.relative_to(ROOT).as_posix()
        assert rel.count("/") == 1 and any(fnmatch.fnmatchcase(rel, g) for g in globs), rel


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_recipe_validates(path):
    recipe, _ = load_recipe(str(path))
    assert recipe.stages


def test_typo_names_key_and_line(tmp_path, capsys):
    bad = tmp_path / "typo.yaml"
    bad.write_text("name: t\nstages:\n  - kind: prune\n    ratio: 0.2\n    critrion: wanda\n")
    with pytest.raises(SlimdeployError, match=r"typo.yaml:5: stages.0.prune.critrion: unknown key"):
        load_recipe(str(bad))
    code, _, err = run_cli(["compress", "--recipe", str(bad), "--model", "/nonexistent"], capsys)
    assert code == 1 and "critrion" in err and ":5:" in err  # failed before looking at the model


def test_stage_order_checked(tmp_path):
    bad = tmp_path / "order.yaml"
    bad.write_text("name: o\nstages:\n  - kind: recover\n  - kind: eval\n")
    with pytest.raises(SlimdeployError, match="followed by merge"):
        load_recipe(str(bad))


def test_set_overrides(tmp_path):
    recipe, _ = load_recipe("20pct", ["prune.ratio=0.3", "recover.steps=5"])
    assert recipe.stages[1].ratio == 0.3
    with pytest.raises(SlimdeployError, match="no 'bench' stage"):
        load_recipe("depth-25", ["bench.repeats=2"])
    with pytest.raises(SlimdeployError, match="dtype bf16 is not available for vllm"):
        load_recipe("20pct", ["export.dtype=bf16"])


def _short(name: str) -> list[str]:
    """Budgets small enough for a tiny model in the test suite."""
    kinds = {s.kind for s in load_recipe(name)[0].stages}
    sets = ["eval.max_tokens=200", "eval.context_length=64"]
    if "prune" in kinds:
        sets += ["prune.n_samples=4", "prune.seq_len=32", "prune.round_to=16"]
    if "export" in kinds:
        sets += ["export.verify=false"]  # runtime verification is tested in test_export.py
    if "bench" in kinds:
        sets += ["bench.input_len=8", "bench.output_len=4", "bench.repeats=1", "bench.concurrency=[1]"]
    if "quantize" in kinds:
        sets += ["quantize.n_samples=4", "quantize.seq_len=32"]
    if "recover" in kinds:
        sets += [
            "recover.steps=4",
            "recover.batch_size=2",
            "recover.seq_len=32",
            "recover.warmup=1",
            "recover.update_every=2",
        ]
    return sets


def _compress_args(name: str, model_dir, data, out) -> list[str]:
    args = ["-q", "compress", "--recipe", name, "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    for s in _short(name):
        args += ["--set", s]
    return args


@pytest.fixture
def small_dir(tmp_path, tokenizer):
    from slimdeploy.load.tiny import build_tiny_model

    path = tmp_path / "small"
    # layers hold most parameters (as in real models) so 50% is reachable beside an 8k-token embedding
    build_tiny_model(
        "llama",
        hidden_size=256,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=1024,
        num_hidden_layers=4,
        vocab_size=8192,
        tied=True,
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_builtin_recipe_end_to_end(name, small_dir, text_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(_compress_args(name, small_dir, text_file, out), capsys)
    assert code == 0, err
    kinds = {s.kind for s in load_recipe(name)[0].stages}
    if "export" in kinds:
        assert list((out / "exports").iterdir())
    pruned = ["pruning.json"] if "prune" in kinds else []  # a quantize-only recipe removes nothing
    for f in ("config.json", "model.safetensors", "tokenizer.json", "recipe.yaml", "report.json", *pruned):
        assert (out / f).exists(), f
    for f in ("report.md", "README.md"):
        assert (out / f).exists(), f
    assert not list(tmp_path.glob(".out.partial*"))


def test_report_fields_recompute(small_dir, text_file, tmp_path, capsys):
    from slimdeploy.evaluate.api import evaluate_loaded
    from slimdeploy.load.model import load_model

    out = tmp_path / "out"
    args = _compress_args("20pct", small_dir, text_file, out)
    assert run_cli(args, capsys)[0] == 0
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    loaded = load_model(str(out))
    params = sum(p.numel() for p in loaded.model.parameters())
    assert s["params_after"] == params
    assert s["bytes_after"] == sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    orig = load_model(str(small_dir)).model
    assert s["params_before"] == sum(p.numel() for p in orig.parameters())
    last_eval = [st for st in report["stages"] if st["kind"] == "eval"][-1]
    again = evaluate_loaded(
        loaded.model, loaded.tokenizer, str(text_file), {"context_length": 64, "stride": None}, max_tokens=200
    )
    assert again["ppl"] == pytest.approx(last_eval["ppl"], rel=1e-5)
    assert s["perplexity"]["recovered"] == last_eval["ppl"]
    assert (out / "plots" / "perplexity_per_stage.png").stat().st_size > 1000


def test_existing_output_needs_force(small_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    code, _, err = run_cli(["compress", "--model", str(small_dir), "--out", str(out)], capsys)
    assert code == 1 and "already exists" in err


def test_interrupted_compress_resumes(small_dir, text_file, tmp_path, capsys, monkeypatch):
    """A failure in a late stage leaves .partial state; the re-run continues after the last finished stage."""
    from slimdeploy.pipeline.kinds import KINDS
    from slimdeploy.recipe.schema import MergeStage

    out = tmp_path / "out"
    args = _compress_args("20pct", small_dir, text_file, out)
    calls = []
    real_merge = KINDS[MergeStage].run

    def failing_merge(*a, **k):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(KINDS[MergeStage], "run", failing_merge)
    code, _, _ = run_cli(args, capsys)
    assert code == 130 and not out.exists()
    state = json.loads((tmp_path / ".out.partial" / "state.json").read_text())
    assert state["done"] == 4 and state["adapter_pending"]
    monkeypatch.setattr(KINDS[MergeStage], "run", real_merge)
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    kinds = [s["kind"] for s in report["stages"]]
    assert kinds == ["load", "eval", "prune", "eval", "recover", "merge", "eval", "export", "export", "export", "bench"]
