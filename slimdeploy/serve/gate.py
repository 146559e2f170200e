"""The regression gate: a fresh bench report against a saved one (or two models measured live).

Noise handling: only medians over repeats are compared (min/max are reported, not gated); a model fails when
its median decode throughput falls below (1 - max_slowdown) x the reference's at any concurrency, or its
median TPOT rises above (1 + max_slowdown) x. Reports must share backend, lengths and concurrency levels,
otherwise the comparison is refused: numbers from different setups are not comparable.
"""

from __future__ import annotations

import math

from slimdeploy.errors import SlimdeployError


def parse_fraction(text: str) -> float:
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise SlimdeployError(
            f"threshold {text!r} is not a number; give a percentage such as 5% or a fraction such as 0.05"
        ) from None
    if not 0 <= value < 1:
        raise SlimdeployError(f"threshold {text!r} must be between 0% and 100%")
    return value


def check(
    report: dict, reference: dict, max_slowdown: float, model: str | None = None, ref_model: str | None = None
) -> list[str]:
    """Violations (empty = pass). `model` picks the report's model to gate (default: the last, the candidate);
    `ref_model` the reference's (default: the same name, else its last). Live gating of two models measured in
    one run passes the same report twice: model="candidate", ref_model="baseline"."""
    for which, r in (("report", report), ("reference", reference)):
        if r.get("partial"):
            raise SlimdeployError(
                f"the {which} is partial (a backend stopped early: {r.get('error', '?')}); re-run the benchmark"
            )
        if not isinstance(r.get("models"), dict) or not isinstance(r.get("config"), dict):
            raise SlimdeployError(f"the {which} is not a slimdeploy bench.json (no models/config)")
    if report.get("backend") != reference.get("backend"):
        raise SlimdeployError(
            f"reports are not comparable: backend {report.get('backend')} vs {reference.get('backend')}"
        )
    for key in ("input_len", "output_len", "dtype", "repeats", "warmup"):
        got, want = report["config"].get(key), reference["config"].get(key)
        if got != want:
            raise SlimdeployError(
                f"reports are not comparable: {key} {got} vs {want} in the reference; "
                "re-run the reference with the same settings"
            )
    name = _pick(report, "report", model)
    ref_name = _pick(reference, "reference", ref_model or (model if model in reference["models"] else None))
    got, ref = _levels(report, "report", name), _levels(reference, "reference", ref_name)
    problems = []
    for c, r in ref.items():
        if c not in got:
            raise SlimdeployError(f"concurrency {c} is in the reference but not in the report")
        tput, tput_ref = _median(got[c], "report", c, "output_tok_s"), _median(r, "reference", c, "output_tok_s")
        if tput < (1 - max_slowdown) * tput_ref:
            problems.append(f"concurrency {c}: output {tput:.1f} tok/s < {(1 - max_slowdown):.0%} of {tput_ref:.1f}")
        tpot, tpot_ref = _median(got[c], "report", c, "tpot_s", "p50"), _median(r, "reference", c, "tpot_s", "p50")
        if tpot > (1 + max_slowdown) * tpot_ref:
            problems.append(
                f"concurrency {c}: TPOT {tpot * 1e3:.2f} ms > {1 + max_slowdown:.0%} of {tpot_ref * 1e3:.2f} ms"
            )
    return problems


def _pick(report: dict, which: str, name: str | None) -> str:
    models = report["models"]
    if not models:
        raise SlimdeployError(f"the {which} measured no model (empty models); re-run the benchmark")
    if name is None:
        return list(models)[-1]
    if name not in models:
        raise SlimdeployError(f"the {which} has no model {name!r} (it has {', '.join(models)})")
    return name


def _levels(report: dict, which: str, name: str) -> dict:
    levels = report["models"][name].get("concurrency") if isinstance(report["models"][name], dict) else None
    if not isinstance(levels, dict) or not levels:
        raise SlimdeployError(
            f"the {which}'s model {name!r} has no concurrency levels: nothing to compare; re-run the benchmark"
        )
    return levels


def _median(level: dict, which: str, c: str, *path: str) -> float:
    """A positive finite median, or a one-line refusal: a gate that compares NaN passes everything."""
    value: object = level
    for key in (*path, "median"):
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SlimdeployError(
            f"the {which} has no usable {'.'.join(path)} median at concurrency {c} ({value!r}); re-run the benchmark"
        )
    return float(value)
