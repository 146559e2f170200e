"""Interruption and concurrency: Ctrl-C says how to continue, a second run on the same output is refused,
kill -9 leaves nothing running and nothing stale in the output, and the resumed run equals a clean one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import run_cli
from test_reliability import save_tiny

ROOT = Path(__file__).resolve().parent.parent


def _recipe(tmp_path: Path, text: Path) -> Path:
    stages = [
        {"kind": "eval", "data": str(text), "max_tokens": 2000, "context_length": 64},
        {"kind": "prune", "criterion": "wanda", "ratio": 0.05, "round_to": 8, "data": str(text), "n_samples": 4},
        {"kind": "eval", "data": str(text), "max_tokens": 2000, "context_length": 64},
    ]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "stages": stages}))
    return path


def test_second_run_on_the_same_output_is_refused(tmp_path, tokenizer, capsys):
    model = save_tiny(tmp_path / "m", tokenizer)
    out = tmp_path / "o"
    holder = subprocess.Popen(  # stands for a live run in another process
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(["prune", "--model", str(model), "--criterion", "l2", "--out", str(out)], capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and f"another slimdeploy run (pid {holder.pid}) is using" in err
    assert not out.exists()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from slimdeploy.utils.fs import output_lock
with output_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_ctrl_c_says_how_to_continue(tmp_path, tokenizer, text_file, capsys, monkeypatch):
    from slimdeploy.pipeline.kinds import KINDS
    from slimdeploy.recipe.schema import PruneStage

    model = save_tiny(tmp_path / "m", tokenizer)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(KINDS[PruneStage], "run", interrupted)
    args = ["--quiet", "compress", "--recipe", str(_recipe(tmp_path, text_file)), "--model", str(model), "--out", "o"]
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert code == 130 and err.count("\n") == 1
    assert "stage 2/3 (prune)" in err and "run the same command again to continue" in err
    assert json.loads((tmp_path / ".o.partial" / "state.json").read_text())["done"] == 1


def test_ctrl_c_outside_compress_says_interrupted(tmp_path, tokenizer, capsys, monkeypatch):
    """typer turns Ctrl-C into a silent exit code 130: every command still says what happened and what to do."""
    from slimdeploy.prune import stage as stage_mod

    model = save_tiny(tmp_path / "m", tokenizer)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage_mod, "prune_loaded", interrupted)
    args = ["prune", "--model", str(model), "--criterion", "l2", "--ratio", "0.05", "--round-to", "8"]
    code, _, err = run_cli([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 130 and "interrupted: nothing half-written was kept" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_stale_partials_of_a_killed_run_are_swept(tmp_path, tokenizer, capsys):
    model = save_tiny(tmp_path / "m", tokenizer)
    stale = tmp_path / ".o.partial-abc123"  # what atomic_dir leaves when its process is killed
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    args = ["prune", "--model", str(model), "--criterion", "l2", "--ratio", "0.05", "--round-to", "8"]
    code, _, err = run_cli([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "o"]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the run never reached the point to kill it"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 2])  # killed inside the prune stage, then inside the last eval
def test_kill_9_between_stages_then_resume_equals_a_clean_run(kill_after, tmp_path, tokenizer, text_file):
    from safetensors.torch import load_file

    model = save_tiny(tmp_path / "m", tokenizer)
    recipe = _recipe(tmp_path, text_file)
    cmd = [sys.executable, "-m", "slimdeploy", "--quiet", "compress", "--recipe", str(recipe), "--model", str(model)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    state = tmp_path / ".killed.partial" / "state.json"
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "killed")], env=env, stderr=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: state.exists() and json.loads(state.read_text())["done"] >= kill_after)
    resumed = subprocess.run([*cmd, "--out", str(tmp_path / "killed")], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    clean = subprocess.run([*cmd, "--out", str(tmp_path / "clean")], env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    a, b = load_file(tmp_path / "killed" / "model.safetensors"), load_file(tmp_path / "clean" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial, no lock


@pytest.mark.vllm
@pytest.mark.slow
def test_kill_9_during_vllm_verification_leaves_no_process(tmp_path, tokenizer):
    """The exporter's vLLM child and vLLM's engine process go with it; the next export sweeps what is left."""
    model = save_tiny(tmp_path / "m", tokenizer, hidden_size=128, head_dim=32, max_position_embeddings=256)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "slimdeploy", "--quiet", "export", str(model), "--format", "vllm"]
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "v")], env=env, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    seen: list[psutil.Process] = []

    def vllm_started() -> bool:
        kids = parent.children(recursive=True)
        seen[:] = kids
        return len(kids) >= 2  # our runner and vLLM's engine core

    _kill_when(proc, vllm_started)
    deadline = time.monotonic() + 20
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in seen) and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = [p.pid for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes outlived their parent: {alive}"
    assert list(tmp_path.glob(".v.partial-*"))  # the killed run could not clean up ...
    done = subprocess.run([*cmd, "--out", str(tmp_path / "v")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(".v.*"))  # ... the next one swept it
    assert not [p for p in (tmp_path / "v").iterdir() if ".partial" in p.name]


def test_failure_while_writing_the_report_keeps_the_exports(tmp_path, tokenizer, text_file, capsys, monkeypatch):
    """The products (exports, bench) are moved into the final folder before the reports are written; a failure
    there must not lose them on the re-run (seen: a resumed run wrote a report naming exports it no longer had)."""
    import yaml

    from slimdeploy.pipeline import report

    model = save_tiny(tmp_path / "m", tokenizer)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "stages": [{"kind": "export", "format": "onnx", "verify": False}]}))
    real = report.write_outputs

    def failing(*a, **k):
        raise RuntimeError("disk hiccup")

    monkeypatch.setattr(report, "write_outputs", failing)
    args = ["--quiet", "compress", "--recipe", str(recipe), "--model", str(model), "--out", str(tmp_path / "o")]
    code, _, _ = run_cli(args, capsys)
    assert code != 0 and not (tmp_path / "o").exists()
    monkeypatch.setattr(report, "write_outputs", real)
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert (tmp_path / "o" / "exports" / "onnx" / "model.onnx").exists()
