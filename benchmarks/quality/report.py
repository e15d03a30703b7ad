"""What the quality runner writes from its results: ``results.md`` (:func:`render_markdown`) and
the panels of ``results.png`` (:func:`headline_panels`, drawn with matplotlib by
:func:`ganplug.plots.quality_png`)."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.quality.recipes import mean_std


def _fmt(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "nan"
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.3f}".rstrip("0").rstrip(".")


def render_markdown(results: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in results["seeds"])
    lines = ["# ganplug quality benchmarks", "",
             f"Seeds: {seeds}. Mean ± sample std (ddof=1) over seeds; \"met\" judges the mean.", ""]
    for name, bench in results["benchmarks"].items():
        times = [r["train_seconds"] for r in bench["runs"]]
        t_mean, _ = mean_std(times)
        baseline = bench.get("baseline")
        extra = f" {baseline['name']} (same seeds) |" if baseline else ""
        lines += [f"## {name}", "",
                  f"Recipe `{bench['recipe']}`, dataset `{bench['dataset']}`, {bench['steps']} steps, "
                  f"{len(bench['runs'])} seeds, mean training time {_fmt(t_mean)} s per seed.", "",
                  "| metric | key | mean ± std | n | target | met |" + extra,
                  "|---|---|---|---|---|---|" + ("---|" if baseline else "")]
        for key, entry in bench["summary"].items():
            met = {True: "yes", False: "no", None: ""}[entry["met"]]
            row = (f"| {entry['metric']} | {key} | {_fmt(entry['mean'])} ± {_fmt(entry['std'])} | {entry['n']} "
                   f"| {entry['target'] or ''} | {met} |")
            if baseline:
                other = baseline["summary"].get(key)
                row += f" {_fmt(other['mean'])} ± {_fmt(other['std'])} |" if other else " |"
            lines.append(row)
        if baseline:
            verdict = ", ".join(f"{key}: {'GAN better' if better else baseline['name'] + ' better'}"
                                for key, better in baseline["gan_better"].items())
            lines += ["", f"Against the {baseline['name']} baseline ({baseline_description(baseline['name'])}): {verdict}."]
        lines.append("")
    return "\n".join(lines)


def baseline_description(name: str) -> str:
    from benchmarks.quality.baselines import BASELINES

    return BASELINES[name][1] if name in BASELINES else name


def headline_panels(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per benchmark, what results.png draws: ``{"name", "key", "seeds", "values", "mean",
    "target", "bound"}`` of its headline metric key (else its first key; benchmarks without
    metrics are left out)."""
    panels = []
    for name, bench in results["benchmarks"].items():
        summary = bench["summary"]
        key = bench.get("headline")
        if key not in summary:
            key = next(iter(summary), None)
        if key is None:
            continue
        entry = summary[key]
        panels.append({
            "name": name, "key": key, "seeds": [run["seed"] for run in bench["runs"]], "values": entry["values"],
            "mean": entry["mean"], "target": entry["target"], "bound": _target_bound(entry["target"]),
        })
    return panels


def _target_bound(text: str | None) -> float | None:
    """The number of a target like "≤ 0.03" or "≥ 97" (None for the others)."""
    if not text or text[0] not in "≤≥=":
        return None
    try:
        return float(text[1:].strip())
    except ValueError:
        return None


def results_png(results: dict[str, Any]) -> bytes:
    """results.png: the headline metric of each benchmark, one dot per seed (PNG bytes)."""
    from ganplug.plots import quality_png

    return quality_png(headline_panels(results))
