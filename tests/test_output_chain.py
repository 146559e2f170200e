"""Every command's output is a complete artifact the next command accepts.

Each prune output (one criterion per family: data-free, activation, gradient, curvature; uniform and global
widths) is fed to eval, export and bench, and loaded by stock `from_pretrained` with the same logits as
slimdeploy's own loader. The tokenizer travels even when the stage never read text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from slimdeploy.load.model import has_tokenizer_files, load_model

FAMILIES = {"data-free": "l2", "activation": "wanda", "gradient": "taylor", "curvature": "surgeon"}


def _prune(src: Path, out: Path, criterion: str, text: Path, capsys, *extra: str) -> None:
    args = ["prune", "--model", str(src), "--out", str(out), "--criterion", criterion, "--ratio", "0.05"]
    args += ["--round-to", "8", "--n-samples", "4", "--seq-len", "32", *extra]
    if criterion != "l2":
        args += ["--data", str(text)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err


def _stock_logits_match(out: Path) -> None:
    """transformers alone (no slimdeploy code path) loads the folder, with slimdeploy's logits."""
    from transformers import AutoModelForCausalLM

    config = json.loads((out / "config.json").read_text())
    per_layer = "block_configs" in config
    stock = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=per_layer).eval()
    ours = load_model(str(out)).model
    ids = torch.tensor([[1, 5, 9, 200, 31, 7, 64, 3]])
    with torch.no_grad():
        assert torch.allclose(stock(ids).logits, ours(ids).logits, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_prune_output_feeds_every_command(family, tiny_dir, tmp_path, text_file, capsys):
    out = tmp_path / "pruned"
    _prune(tiny_dir, out, FAMILIES[family], text_file, capsys)
    assert has_tokenizer_files(out) and (out / "generation_config.json").is_file()
    _stock_logits_match(out)
    code, _, err = run_cli(["eval", "--model", str(out), "--data", str(text_file), "--max-tokens", "256"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "onnx")], capsys)
    assert code == 0, err
    bench = ["bench", "run", str(out), "--baseline", str(tiny_dir), "--out", str(tmp_path / "b")]
    code, _, err = run_cli(
        [*bench, "--concurrency", "1", "--repeats", "1", "--input-len", "8", "--output-len", "2"], capsys
    )
    assert code == 0, err


@pytest.mark.slow
def test_global_widths_output_loads_in_stock_transformers(tiny_dir, tmp_path, text_file, capsys):
    """Per-layer widths: config.json never disagrees with the weights (stored as DeciLM files)."""
    from safetensors import safe_open

    out = tmp_path / "global"
    _prune(tiny_dir, out, "wanda", text_file, capsys, "--allocation", "global", "--ratio", "0.06")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"], "the widths came out uniform: no per-layer case"
    _stock_logits_match(out)
    widths = {b["ffn"]["intermediate_size"] for b in config["block_configs"]}
    with safe_open(out / "model.safetensors", "pt") as f:
        for i, block in enumerate(config["block_configs"]):
            shape = f.get_slice(f"model.layers.{i}.mlp.up_proj.weight").get_shape()
            assert shape == [block["ffn"]["intermediate_size"], config["hidden_size"]]
    assert len(widths) > 1
    code, _, err = run_cli(["eval", "--model", str(out), "--data", str(text_file), "--max-tokens", "256"], capsys)
    assert code == 0, err
    # a pruned output prunes again (composes), and a second global prune still reloads
    _prune(out, tmp_path / "again", "l2", text_file, capsys, "--allocation", "global", "--ratio", "0.03")
    _stock_logits_match(tmp_path / "again")


@pytest.mark.slow
def test_data_free_prune_of_a_folder_without_tokenizer_still_loads(tmp_path, capsys):
    """No tokenizer in, none out: the export then refuses in one line instead of crashing."""
    from test_reliability import save_tiny

    src = save_tiny(tmp_path / "weights-only")
    out = tmp_path / "o"
    _prune(src, out, "l2", tmp_path, capsys)
    code, _, err = run_cli(["export", str(out), "--format", "vllm", "--out", str(tmp_path / "v")], capsys)
    assert code == 1 and "no tokenizer files" in err and err.count("\n") == 1, err
    assert not (tmp_path / "v").exists()


@pytest.mark.slow
def test_compress_output_feeds_export_quantize_and_stock_transformers(tiny_dir, tmp_path, text_file, capsys):
    """compress -> export / quantize / from_pretrained, for uniform and global (per-layer) widths."""
    import yaml

    for allocation in ("uniform", "global"):
        stage = {"kind": "prune", "criterion": "wanda", "ratio": 0.06, "round_to": 8, "allocation": allocation}
        stages = [{**stage, "data": str(text_file), "n_samples": 4, "seq_len": 32}]
        recipe = tmp_path / f"{allocation}.yaml"
        recipe.write_text(yaml.safe_dump({"name": allocation, "stages": stages}))
        out = tmp_path / f"c-{allocation}"
        args = ["compress", "--recipe", str(recipe), "--model", str(tiny_dir), "--out", str(out)]
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        _stock_logits_match(out)
        per_layer = "block_configs" in json.loads((out / "config.json").read_text())
        assert per_layer == (allocation == "global")
        card = (out / "README.md").read_text()
        assert card.startswith(f"# {out.name}")
        assert ("trust_remote_code=True" in card) == (allocation == "global")
        code, _, err = run_cli(
            ["export", str(out), "--format", "onnx", "--out", str(tmp_path / f"x-{allocation}")], capsys
        )
        assert code == 0, err
    code, _, err = run_cli(
        ["quantize", str(tmp_path / "c-uniform"), "--out", str(tmp_path / "q"), "--method", "rtn"], capsys
    )
    assert code == 0, err
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
