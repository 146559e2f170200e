"""The CLI: --help and --version everywhere, not-yet commands say so, bad input gives one line."""

from __future__ import annotations

import pytest
from conftest import run_cli

COMMANDS = ["eval", "inspect", "prune", "compress", "export", "bench", "recipes", "zoo"]


def test_version(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith("slimdeploy ")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd, capsys):
    code, out, _ = run_cli([cmd, "--help"], capsys)
    assert code == 0 and "Usage" in out


def test_backend_not_installed_names_the_extra(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    code, _, err = run_cli(["bench", "run", ".", "--backend", "vllm"], capsys)
    assert code == 1 and "pip install 'slimdeploy[cpu]'" in err and err.count("\n") == 1


def _one_line_error(code, err):
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_missing_model_path(capsys, text_file):
    _one_line_error(*run_cli(["eval", "--model", "./no/such/model", "--data", str(text_file)], capsys)[::2])


def test_directory_that_is_not_a_model(capsys, tmp_path, text_file):
    code, _, err = run_cli(["eval", "--model", str(tmp_path), "--data", str(text_file)], capsys)
    _one_line_error(code, err)
    assert "not a model directory" in err


def test_corrupt_safetensors(capsys, tiny_dir, text_file):
    weights = tiny_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_cli(["eval", "--model", str(tiny_dir), "--data", str(text_file)], capsys)
    _one_line_error(code, err)
    assert "corrupt safetensors" in err


def test_unsupported_architecture(capsys, tiny_dir, text_file):
    cfg = tiny_dir / "config.json"
    cfg.write_text(cfg.read_text().replace('"model_type": "llama"', '"model_type": "my-secret-arch"'))
    code, _, err = run_cli(["eval", "--model", str(tiny_dir), "--data", str(text_file)], capsys)
    _one_line_error(code, err)
    assert "unsupported architecture" in err


def test_unknown_dtype(capsys, tiny_dir, text_file):
    code, _, err = run_cli(["eval", "--model", str(tiny_dir), "--data", str(text_file), "--dtype", "fp8"], capsys)
    _one_line_error(code, err)
    assert "unknown dtype" in err


def test_text_too_short(capsys, tiny_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass")
    code, _, err = run_cli(["eval", "--model", str(tiny_dir), "--data", str(short)], capsys)
    _one_line_error(code, err)
    assert "too short" in err


def test_hub_id_offline_not_cached(capsys, monkeypatch, tmp_path, text_file):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, _, err = run_cli(["eval", "--model", "nobody/does-not-exist", "--data", str(text_file)], capsys)
    _one_line_error(code, err)
    assert "nobody/does-not-exist" in err and "local Hugging Face cache" in err


def test_debug_shows_traceback(capsys, tmp_path, text_file):
    from slimdeploy.errors import SlimdeployError

    with pytest.raises(SlimdeployError):
        run_cli(["--debug", "eval", "--model", str(tmp_path), "--data", str(text_file)], capsys)


def test_eval_json_and_inspect(capsys, tiny_dir, text_file):
    import json

    code, out, _ = run_cli(
        [
            "--json",
            "eval",
            "--model",
            str(tiny_dir),
            "--data",
            str(text_file),
            "--context-length",
            "64",
            "--max-tokens",
            "300",
        ],
        capsys,
    )
    assert code == 0
    r = json.loads(out)
    assert r["tokens_scored"] == 299 and r["protocol"]["context_length"] == 64 and r["ppl"] > 1
    code, out, _ = run_cli(["--json", "inspect", str(tiny_dir), "--groups"], capsys)
    r = json.loads(out)
    assert code == 0 and r["attention"]["kv_heads"] == 2 and r["groups"]["layers"][0]["mlp"] == 128
    assert sum(r["by_component"].values()) == r["parameters"]


def test_hub_id_served_from_local_cache(tmp_path, tiny_dir, text_file):
    """A hub id resolves from the Hugging Face cache layout with the hub unreachable (offline)."""
    import os
    import shutil
    import subprocess
    import sys

    snap = tmp_path / "hf" / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_dir, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0123abcd")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimdeploy",
            "--json",
            "eval",
            "--model",
            "acme/tiny-llama",
            "--data",
            str(text_file),
            "--context-length",
            "32",
            "--max-tokens",
            "64",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"tokens_scored": 63' in proc.stdout
