"""Shared fixtures: tiny in-process models, the shared-data location, and a clean CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_VERBOSITY", "error")

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SLIMDEPLOY_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_path(rel: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason (users do not have that folder)."""
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (set SLIMDEPLOY_SHARED_DATA to its folder)")
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tokenizer():
    from transformers import AutoTokenizer

    from slimdeploy.load.model import demo_model_dir

    return AutoTokenizer.from_pretrained(demo_model_dir())


def ids(batch: int = 2, seq: int = 16, vocab: int = 8192, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, seq), generator=g)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the real console entry point in-process; returns (exit code, stdout, stderr)."""
    import sys

    from slimdeploy.cli import main
    from slimdeploy.cli.common import FLAGS

    FLAGS.quiet = FLAGS.json = FLAGS.debug = False
    old = sys.argv
    sys.argv = ["slimdeploy", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def tiny_dir(tmp_path, tokenizer):
    """A tiny random Llama saved like a hub checkpoint (safetensors + config + the demo tokenizer)."""
    from slimdeploy.load.tiny import build_tiny_model

    path = tmp_path / "tiny-llama"
    build_tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """~60 KB of real text (stdlib sources) for calibration, recovery and eval in tests."""
    from slimdeploy.zoo.corpus import read_split

    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("\n\n".join(read_split("calibration")[:40])[:60000])
    return path


# (kept query heads, kept KV heads, MLP width) per layer of an 8-head / 4-KV-head model; one MLP removed
PER_LAYER_WIDTHS = [(8, 4, 512), (2, 1, 320), (4, 2, 0), (6, 3, 128)]


def per_layer_dir(tmp_path, tokenizer, family: str = "llama") -> Path:
    """A saved model whose layers differ in query heads, KV heads and MLP width (head_dim 32 for vLLM's CPU)."""
    from slimdeploy.analyze.slicing import prune_attention, prune_mlp
    from slimdeploy.load.checkpoint import save_model
    from slimdeploy.load.tiny import build_tiny_model
    from slimdeploy.prune.apply import sync_config

    model = build_tiny_model(
        family,
        hidden_size=256,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        intermediate_size=512,
        num_hidden_layers=len(PER_LAYER_WIDTHS),
        max_position_embeddings=512,
    )
    for layer, (heads, kv, inter) in zip(model.model.layers, PER_LAYER_WIDTHS, strict=True):
        per = heads // kv
        keep_kv = torch.arange(kv) * 4 // kv  # spread the kept groups: not simply the first ones
        keep_heads = torch.cat([g * 2 + torch.arange(per) for g in keep_kv.tolist()])
        prune_attention(layer, keep_heads, keep_kv)
        prune_mlp(layer, torch.randperm(512)[:inter].sort().values)
    assert not sync_config(model)
    path = tmp_path / f"per-layer-{family}"
    path.mkdir()
    save_model(model, tokenizer, path)
    return path
