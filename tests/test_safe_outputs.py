"""What must keep working next to the refusals: our own outputs are replaceable, our own export code is
trusted by hash, data-free pruning needs no tokenizer, GGUF input can be written, configs without head_dim
survive head pruning, global flags after the sub-command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from test_reliability import save_tiny

from slimdeploy.errors import SlimdeployError
from slimdeploy.load.model import load_model
from slimdeploy.utils.fs import MARKER


def test_force_replaces_an_output_slimdeploy_wrote(tmp_path, tokenizer, capsys):
    model = save_tiny(tmp_path / "m", tokenizer)
    args = [
        "prune",
        "--model",
        str(model),
        "--criterion",
        "l2",
        "--round-to",
        "8",
        "--ratio",
        "0.05",
        "--out",
        str(tmp_path / "o"),
    ]
    assert run_cli(args, capsys)[0] == 0
    assert (tmp_path / "o" / MARKER).is_file()
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "already exists" in err
    code, _, err = run_cli([*args, "--ratio", "0.04", "--force"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "prune_report.json").read_text())["config"]["ratio"] == 0.04
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "o"]  # no lock or partial left


def test_our_decilm_code_is_trusted_by_hash_and_foreign_code_is_not(tmp_path):
    from slimdeploy.utils.trust import OUR_CODE_DIR, remote_code_allowed

    d = tmp_path / "export"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig"}}))
    with pytest.raises(SlimdeployError, match="configuration_decilm.py"):  # auto_map names code that is absent
        remote_code_allowed(d)
    for name in ("configuration_decilm.py", "modeling_decilm.py"):
        shutil.copy2(OUR_CODE_DIR / name, d / name)
    assert remote_code_allowed(d) is True
    with (d / "modeling_decilm.py").open("a") as f:
        f.write("\nimport os  # one changed byte is enough\n")
    with pytest.raises(SlimdeployError, match="modeling_decilm.py"):
        remote_code_allowed(d)
    assert remote_code_allowed(d, trust_remote_code=True) is True
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert remote_code_allowed(plain) is False  # no code at all: nothing to trust


def test_auto_map_naming_a_missing_module_is_foreign(tmp_path):
    from slimdeploy.utils.trust import remote_code_allowed

    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    with pytest.raises(SlimdeployError, match="evil.py"):
        remote_code_allowed(tmp_path)


def test_data_free_pruning_needs_no_tokenizer(tmp_path, capsys):
    model = save_tiny(tmp_path / "weights-only")  # no tokenizer files
    out = tmp_path / "o"
    code, _, err = run_cli(
        ["prune", "--model", str(model), "--criterion", "l1", "--round-to", "8", "--ratio", "0.05", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    loaded = load_model(str(out))
    assert loaded.tokenizer is None and loaded.model.config.intermediate_size < 128


def test_gguf_input_can_be_pruned_and_written(tmp_path, tokenizer, capsys):
    from gguf_writer import write_llama_gguf

    from slimdeploy.load.tiny import build_tiny_model

    model = build_tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16, num_attention_heads=4)
    gguf = tmp_path / "tiny.gguf"
    write_llama_gguf(model, tokenizer, gguf)
    before = gguf.read_bytes()
    out = tmp_path / "o"
    code, _, err = run_cli(
        ["prune", "--model", str(gguf), "--criterion", "l2", "--round-to", "8", "--ratio", "0.05", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["intermediate_size"] < 128
    reloaded = load_model(str(out)).model
    assert reloaded.config.intermediate_size == config["intermediate_size"]
    assert gguf.read_bytes() == before


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])  # Qwen3 configs always carry head_dim
def test_config_without_head_dim_survives_head_pruning(family, tmp_path):
    """Real Qwen2 config.json files have no head_dim; after removing heads it must be written explicitly."""
    from slimdeploy.load.checkpoint import save_model
    from slimdeploy.prune.api import PruneConfig, prune

    src = save_tiny(tmp_path / "src", family=family, hidden_size=128, num_attention_heads=8, num_key_value_heads=4)
    cfg = json.loads((src / "config.json").read_text())
    assert cfg.pop("head_dim") == 16  # = hidden / heads, so the file is valid without it, like Qwen2's
    (src / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(str(src), with_tokenizer=False)
    config = PruneConfig(ratio=0.05, criterion="l2", structures=["head", "mlp"], round_to=8, attn_share=0.9)
    prune(loaded.model, config, None)
    assert loaded.model.config.num_attention_heads < 8
    out = tmp_path / "out"
    out.mkdir()
    save_model(loaded.model, None, out)
    assert json.loads((out / "config.json").read_text())["head_dim"] == 16
    x = torch.arange(2, 30)[None]
    with torch.no_grad():
        diff = (load_model(str(out)).model(x).logits - loaded.model(x).logits).abs().max().item()
    assert diff < 1e-5


def test_global_flags_after_the_sub_command(tiny_dir, text_file, capsys):
    args = ["--model", str(tiny_dir), "--data", str(text_file), "--max-tokens", "200", "--context-length", "64"]
    code, out, err = run_cli(["eval", *args, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["tokens_scored"] > 0


@pytest.mark.parametrize("target", ["/", "~"])
def test_force_never_replaces_root_or_home(target, monkeypatch, tmp_path):
    from slimdeploy.utils.fs import check_output

    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SlimdeployError, match="filesystem root|home directory"):
        check_output(Path(target).expanduser(), force=True)


def test_resume_sweeps_half_written_exports(tmp_path):
    """A kill -9 during an export stage leaves exports/.<format>.partial-*; it must not travel into the output."""
    from slimdeploy.pipeline.runner import sweep_work

    work = tmp_path / ".out.partial"
    (work / "exports" / "vllm").mkdir(parents=True)
    (work / "exports" / "vllm" / "model.safetensors").write_bytes(b"finished")
    (work / "exports" / ".onnx.partial-x1").mkdir()
    (work / "exports" / ".onnx.lock").write_text("123")
    (work / "export_src").mkdir()
    removed = sweep_work(work)
    assert sorted(p.name for p in (work / "exports").iterdir()) == ["vllm"]
    assert not (work / "export_src").exists() and "export_src" in removed


def test_outputs_take_the_users_umask(tmp_path, tokenizer, capsys):
    """A serving container running as another user must read the weights: no 0600 file, no 0700 folder."""
    import os
    import stat

    model = save_tiny(tmp_path / "m", tokenizer)
    old = os.umask(0o022)
    try:
        out = tmp_path / "o"
        args = ["prune", "--model", str(model), "--criterion", "l2", "--round-to", "8", "--ratio", "0.05"]
        assert run_cli([*args, "--out", str(out)], capsys)[0] == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.iterdir()]}
    assert modes.pop("o") == 0o755 and set(modes.values()) == {0o644}, modes


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs: a real ENOSPC (needs root to mount; skipped elsewhere)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()[:100]}")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("command", ["prune", "compress"])
def test_full_disk_is_one_line_and_leaves_no_half_output(command, full_disk, tmp_path, tokenizer, capsys):
    import yaml

    model = save_tiny(tmp_path / "m", tokenizer)  # ~8 MB of weights for a 1 MB disk
    if command == "prune":
        args = ["prune", "--model", str(model), "--criterion", "l2", "--round-to", "8", "--ratio", "0.05"]
    else:
        recipe = tmp_path / "r.yaml"
        stage = {"kind": "prune", "criterion": "l2", "ratio": 0.05, "round_to": 8}
        recipe.write_text(yaml.safe_dump({"name": "r", "stages": [stage]}))
        args = ["compress", "--recipe", str(recipe), "--model", str(model)]
    code, _, err = run_cli([*args, "--out", str(full_disk / "o")], capsys)
    assert code == 1 and err.startswith("error: no space left on device") and err.count("\n") == 1, err
    assert not (full_disk / "o").exists()
    left = [p.name for p in full_disk.iterdir()]
    assert left == ([] if command == "prune" else [".o.partial"]), left  # compress keeps its finished stages
