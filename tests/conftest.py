"""Shared fixtures: tiny in-process models, the shared-data location, and a clean CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

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
