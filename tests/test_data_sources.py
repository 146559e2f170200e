"""`hf:` data sources through Hugging Face datasets, on a local dataset directory (no hub access)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from slimdeploy.errors import SlimdeployError
from slimdeploy.load.data import load_texts

datasets = pytest.importorskip("datasets", reason="hf: sources need `datasets` (pip install 'slimdeploy[dev]')")

STORIES = [f"Once upon a time there was a cat number {i}. It liked to sleep in the sun." for i in range(40)]


@pytest.fixture
def local_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # keep ~/.cache untouched
    root = tmp_path / "ds"
    root.mkdir()
    rows = [{"text": t, "id": i} for i, t in enumerate(STORIES)] + [{"text": "  ", "id": 99}]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train.jsonl").write_text(json.dumps({"story": "no text column"}) + "\n")
    return tmp_path


def test_hf_source_reads_the_text_column(local_dataset):
    src = load_texts(f"hf:{local_dataset / 'ds'}:train")
    assert src.kind == "hf" and src.docs == STORIES  # blank rows dropped, order kept
    assert src.fingerprint["documents"] == len(STORIES) and src.fingerprint["fingerprint"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("hf:just-a-name", "use hf:NAME:SPLIT"),
        ("hf:{root}/other:train", "no `text` column"),
        ("hf:{root}/ds:validation", "could not load dataset"),
    ],
)
def test_hf_source_errors(local_dataset, spec, match):
    with pytest.raises(SlimdeployError, match=match):
        load_texts(spec.format(root=local_dataset))


def test_eval_on_an_hf_source(local_dataset, capsys):
    code, out, err = run_cli(["--json", "eval", "--data", f"hf:{local_dataset / 'ds'}:train"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["data"]["source"].startswith("hf:") and report["ppl"] > 1
