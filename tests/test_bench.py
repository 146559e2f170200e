"""Serving metrics and the regression gate (no timed assertions: only schema, arithmetic and gate logic)."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import run_cli

from slimdeploy.errors import SlimdeployError
from slimdeploy.serve.gate import check, parse_fraction
from slimdeploy.serve.metrics import kv_bytes_per_token, percentile, summarize_run


def test_percentile_matches_numpy_linear():
    import numpy as np

    xs = [5.0, 1.0, 3.0, 9.0, 7.0, 2.0]
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_summarize_run_arithmetic():
    # two requests starting at t=0; tokens at 1, 1.5, 2 and 2, 2.5, 3 seconds
    r = summarize_run([[1.0, 1.5, 2.0], [2.0, 2.5, 3.0]], 0.0, input_len=10)
    assert r["ttft_s"]["p50"] == 1.5 and r["tpot_s"]["p50"] == 0.5
    assert r["output_tok_s"] == 6 / 3.0 and r["requests_s"] == 2 / 3.0 and r["prefill_tok_s"] == 20 / 2.0


def test_kv_bytes_per_token():
    from slimdeploy.load.tiny import tiny_config

    cfg = tiny_config("llama")  # 3 layers, 2 KV heads, head_dim 8
    assert kv_bytes_per_token(cfg, 2) == 2 * 3 * 2 * 8 * 2


@pytest.fixture
def bench_report(tmp_path, capsys):
    from slimdeploy.load.tiny import build_tiny_model
    from slimdeploy.prune.api import PruneConfig, prune

    base = build_tiny_model(
        "llama",
        hidden_size=128,
        num_attention_heads=4,
        head_dim=32,
        intermediate_size=256,
        num_hidden_layers=2,
        vocab_size=512,
    )
    base.save_pretrained(tmp_path / "base")
    prune(base, PruneConfig(ratio=0.2, criterion="l2", round_to=16), None)
    base.save_pretrained(tmp_path / "cand")
    code, out, err = run_cli(
        [
            "--json",
            "bench",
            "run",
            str(tmp_path / "cand"),
            "--baseline",
            str(tmp_path / "base"),
            "--input-len",
            "8",
            "--output-len",
            "4",
            "--concurrency",
            "1,2",
            "--repeats",
            "2",
            "--out",
            str(tmp_path / "b"),
        ],
        capsys,
    )
    assert code == 0, err
    return tmp_path / "b" / "bench.json"


def test_bench_report_schema_and_ideal(bench_report):
    r = json.loads(bench_report.read_text())
    base, cand = r["models"]["baseline"], r["models"]["candidate"]
    assert set(base["concurrency"]) == {"1", "2"} and len(base["concurrency"]["1"]["runs"]) == 2
    assert cand["vs_baseline"]["1"]["ideal_speedup"] == pytest.approx(base["weight_bytes"] / cand["weight_bytes"])
    assert r["peak_rss_bytes"] > 0
    md = (bench_report.parent / "bench.md").read_text()
    assert md.count("| candidate | 1 |") == 1 and md.count("| candidate | 2 |") == 1  # one row per concurrency
    assert (bench_report.parent / "bench.png").stat().st_size > 0 and "(bench.png)" in md
    assert "KV bytes/token" in md and "ideal (weight bytes)" in md and "weight memory saved" in md


def test_gate_passes_itself_and_fails_a_slowdown(bench_report, capsys):
    ref = json.loads(bench_report.read_text())
    assert check(ref, ref, 0.05) == []
    slow = copy.deepcopy(ref)
    for v in slow["models"]["candidate"]["concurrency"].values():
        v["output_tok_s"]["median"] *= 0.9
    assert len(check(slow, ref, 0.05)) == 2 and check(slow, ref, 0.15) == []
    path = bench_report.parent / "slow.json"
    path.write_text(json.dumps(slow))
    code, out, _ = run_cli(
        ["bench", "check", str(path), "--against", str(bench_report), "--max-slowdown", "5%"], capsys
    )
    assert code == 1 and "FAIL" in out
    code, out, _ = run_cli(["bench", "check", str(bench_report), "--against", str(bench_report)], capsys)
    assert code == 0 and "pass" in out


def test_live_gate_candidate_against_baseline(bench_report, tmp_path, capsys, monkeypatch):
    """`bench run --max-slowdown`: the candidate gated against the baseline measured in the same run."""
    import slimdeploy.serve.bench as bench_mod

    measured = json.loads(bench_report.read_text())
    slow = copy.deepcopy(measured)
    for c, v in slow["models"]["candidate"]["concurrency"].items():
        base = slow["models"]["baseline"]["concurrency"][c]
        v["output_tok_s"]["median"] = 0.5 * base["output_tok_s"]["median"]
        v["tpot_s"]["p50"]["median"] = 2.0 * base["tpot_s"]["p50"]["median"]
    assert len(check(slow, slow, 0.05, "candidate", "baseline")) == 4  # 2 levels x (throughput, TPOT)
    assert check(slow, slow, 0.05, "baseline", "baseline") == []

    monkeypatch.setattr(bench_mod, "bench_torch", lambda models, cfg, progress=None: copy.deepcopy(slow))
    src = bench_report.parent.parent
    args = ["bench", "run", str(src / "cand"), "--baseline", str(src / "base"), "--input-len", "8"]
    args += ["--output-len", "4", "--concurrency", "1,2", "--repeats", "2", "--max-slowdown", "5%"]
    code, out, _ = run_cli([*args, "--out", str(tmp_path / "g")], capsys)
    saved = json.loads((tmp_path / "g" / "bench.json").read_text())
    assert code == 1 and "live gate (candidate vs baseline): FAIL" in out
    assert saved["gate"]["pass"] is False and len(saved["gate"]["problems"]) == 4
    assert "live gate" in (tmp_path / "g" / "bench.md").read_text()
    code, _, err = run_cli([*args[:3], "--max-slowdown", "lots", "--out", str(tmp_path / "h")], capsys)
    assert code == 1 and "'lots' is not a number" in err and not (tmp_path / "h").exists()


def test_gate_refuses_incomparable_reports(bench_report):
    ref = json.loads(bench_report.read_text())
    other = copy.deepcopy(ref)
    other["config"]["output_len"] = 99
    with pytest.raises(SlimdeployError, match="output_len"):
        check(other, ref, 0.05)
    with pytest.raises(SlimdeployError):
        parse_fraction("150%")


def test_missing_report(capsys, tmp_path):
    code, _, err = run_cli(
        ["bench", "check", str(tmp_path / "no.json"), "--against", str(tmp_path / "no.json")], capsys
    )
    assert code == 1 and "does not exist" in err


def test_shape_only_model_is_labelled(tmp_path, capsys):
    from slimdeploy.zoo.shapes import SHAPES, shape_model

    assert {"smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b"} <= set(SHAPES)
    model = shape_model("smollm2-135m")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert model.config.slimdeploy_shape_only == "smollm2-135m"


def test_plot_concurrency_axis_has_integer_ticks_only(bench_report):
    import matplotlib.pyplot as plt

    from slimdeploy.serve.report import bench_figure

    fig = bench_figure(json.loads(bench_report.read_text()))  # levels 1 and 2
    try:
        for ax in fig.axes:
            assert list(ax.get_xticks()) == [1, 2]
    finally:
        plt.close(fig)
