"""bench.json, bench.md and bench.png (throughput, TPOT and speedup against the ideal) from a bench report."""

from __future__ import annotations

import json
from pathlib import Path


def write_bench(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    cfg = report["config"]
    lines = [
        f"# slimdeploy bench ({report['backend']})",
        "",
        f"input {cfg['input_len']} tokens, output {cfg['output_len']} tokens (EOS ignored), dtype {cfg['dtype']}, "
        f"{cfg['repeats']} repeats after {cfg['warmup']} warm-up, baseline and candidate interleaved; "
        f"peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB",
        "",
        *([f"**PARTIAL RESULTS**: {report['error']}", ""] if report.get("partial") else []),
        "| model | conc. | TTFT p50 ms | TPOT p50 ms | e2e p90 ms | out tok/s (min/med/max) | weight MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        for c, v in m["concurrency"].items():
            t = v["output_tok_s"]
            lines.append(
                f"| {name} | {c} | {v['ttft_s']['p50']['median'] * 1e3:.2f} | "
                f"{v['tpot_s']['p50']['median'] * 1e3:.2f} | {v['e2e_s']['p90']['median'] * 1e3:.1f} | "
                f"{t['min']:.0f} / {t['median']:.0f} / {t['max']:.0f} | {m['weight_bytes'] / 1e6:.1f} |"
            )
    lines += [
        "",
        "| model | params | weight MB | KV bytes/token | load s | peak RSS MiB (process tree) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        rss = m.get("peak_rss_bytes")
        lines.append(
            f"| {name} | {m['params']:,} | {m['weight_bytes'] / 1e6:.1f} | {m['kv_bytes_per_token']:,} | "
            f"{m.get('load_s', '-')} | {f'{rss / 2**20:.0f}' if rss else '(in-process)'} |"
        )
    if any(report.get("shape_only", {}).values()):
        lines.append(f"\nshape-only models (random weights with real shapes): {report['shape_only']}")
    cand = report["models"].get("candidate", {}).get("vs_baseline")
    if cand:
        lines += [
            "",
            "| conc. | decode speedup | ideal (weight bytes) | fraction of ideal | throughput speedup |",
            "|---|---|---|---|---|",
        ]
        for c, v in cand.items():
            lines.append(
                f"| {c} | {v['decode_speedup']:.2f}x | {v['ideal_speedup']:.2f}x | "
                f"{v['fraction_of_ideal']:.0%} | {v['throughput_speedup']:.2f}x |"
            )
        saved = report["models"]["candidate"]["weight_memory_saved"]
        lines.append(f"\nweight memory saved: {saved:.1%}")
    gate = report.get("gate")
    if gate:
        lines.append(
            f"\nlive gate (candidate vs baseline, max slowdown {gate['max_slowdown']:.0%}): "
            + ("pass" if gate["pass"] else "FAIL: " + "; ".join(gate["problems"]))
        )
    lines.append("\n![throughput, TPOT and speedup](bench.png)")
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    plot_bench(report, out / "bench.png")


def plot_bench(report: dict, path: Path) -> None:
    """Per concurrency: output tok/s and TPOT p50 (median over repeats) per model, and the candidate's decode
    speedup next to the ideal from weight bytes."""
    import matplotlib.pyplot as plt

    fig = bench_figure(report)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bench_figure(report: dict):
    import matplotlib

    matplotlib.use("Agg")  # no display; the bench may run on a headless CI box
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, m in models.items():
        conc = m.get("concurrency", {})  # a partial report may lack a model's levels
        levels = [int(c) for c in conc]
        axes[0].plot(levels, [v["output_tok_s"]["median"] for v in conc.values()], marker="o", label=name)
        axes[1].plot(levels, [v["tpot_s"]["p50"]["median"] * 1e3 for v in conc.values()], marker="o", label=name)
    vs = models.get("candidate", {}).get("vs_baseline", {})
    if vs:
        levels = [int(c) for c in vs]
        axes[2].plot(levels, [v["decode_speedup"] for v in vs.values()], marker="o", label="measured")
        axes[2].plot(levels, [v["ideal_speedup"] for v in vs.values()], linestyle="--", label="ideal (weight bytes)")
        axes[2].legend()
    measured = sorted({int(c) for m in models.values() for c in m.get("concurrency", {})})
    for ax, label in zip(axes, ("output tokens/s", "TPOT p50 (ms)", "decode speedup (x)")):
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.set_xticks(measured)  # concurrency is a count: ticks at the measured levels only, never 1.5
    axes[0].legend()
    title = f"slimdeploy bench ({report['backend']}, {report['config']['dtype']})"
    fig.suptitle(title + (" - PARTIAL" if report.get("partial") else ""))
    fig.tight_layout()
    return fig
