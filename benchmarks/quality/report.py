"""What the quality runner writes from its results: ``results.md`` (:func:`render_markdown`) and
the panels of ``results.png`` (:func:`headline_panels`, drawn with matplotlib by
:func:`benchmarks.quality.figures.quality_png`)."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.quality.recipes import mean_std
from ganplug.train.progress import format_number


def render_markdown(results: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in results["seeds"])
    lines = [
        "# ganplug quality benchmarks",
        "",
        f'Seeds: {seeds}. Mean ± sample std (ddof=1) over seeds; "met" judges the mean.',
        "",
    ]
    for name, bench in results["benchmarks"].items():
        times = [r["train_seconds"] for r in bench["runs"]]
        t_mean, _ = mean_std(times)
        baseline = bench.get("baseline")
        extra = f" {baseline['name']} (same seeds) |" if baseline else ""
        lines += [
            f"## {name}",
            "",
            f"Recipe `{bench['recipe']}`, dataset `{bench['dataset']}`, {bench['steps']} steps, "
            f"{len(bench['runs'])} seeds, mean training time {format_number(t_mean)} s per seed.",
            "",
            "| metric | key | mean ± std | n | target | met |" + extra,
            "|---|---|---|---|---|---|" + ("---|" if baseline else ""),
        ]
        for key, entry in bench["summary"].items():
            met = {True: "yes", False: "no", None: ""}[entry["met"]]
            row = (
                f"| {entry['metric']} | {key} | {format_number(entry['mean'])} ± {format_number(entry['std'])} | {entry['n']} "
                f"| {entry['target'] or ''} | {met} |"
            )
            if baseline:
                other = baseline["summary"].get(key)
                row += f" {format_number(other['mean'])} ± {format_number(other['std'])} |" if other else " |"
            lines.append(row)
        if baseline:
            verdict = ", ".join(
                f"{key}: {'GAN better' if better else baseline['name'] + ' better'}"
                for key, better in baseline["gan_better"].items()
            )
            lines += [
                "",
                f"Against the {baseline['name']} baseline ({baseline_description(baseline['name'])}): {verdict}.",
            ]
        if bench.get("headline"):
            lines += curves_markdown(bench, bench["headline"])
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
        panels.append(
            {
                "name": name,
                "key": key,
                "seeds": [run["seed"] for run in bench["runs"]],
                "values": entry["values"],
                "mean": entry["mean"],
                "target": entry["target"],
                "bound": _target_bound(entry["target"]),
            }
        )
    return panels


def _target_bound(text: str | None) -> float | None:
    """The number of a target like "≤ 0.03" or "≥ 97" (None for the others)."""
    if not text or text[0] not in "≤≥=":
        return None
    try:
        return float(text[1:].strip())
    except ValueError:
        return None


def curve_panels(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per benchmark whose runs logged evaluations, what curves.png draws (see
    :func:`benchmarks.quality.figures.curves_png`): each seed's headline value against training minutes."""
    panels = []
    for panel in headline_panels(results):
        runs = results["benchmarks"][panel["name"]]["runs"]
        curves = {
            run["seed"]: [(point["seconds"] / 60, point["value"]) for point in run.get("curve", [])] for run in runs
        }
        if any(curves.values()):
            panels.append({**panel, "curves": curves})
    return panels


def curves_markdown(bench: dict[str, Any], key: str) -> list[str]:
    """Time to quality of one benchmark: its headline ``key`` at every evaluated step (mean ± std
    over the seeds that reached it, their mean training minutes) and when each seed first met
    the target; [] without evaluations."""
    by_step: dict[int, list[tuple[float, Any]]] = {}
    for run in bench["runs"]:
        for point in run.get("curve", []):
            by_step.setdefault(point["step"], []).append((point["seconds"], point["value"]))
    if not by_step:
        return []
    lines = [
        "",
        f"Time to quality ({key} while training, one CPU core):",
        "",
        "| step | minutes (mean) | mean ± std | seeds |",
        "|---:|---:|---|---:|",
    ]
    for step in sorted(by_step):
        points = by_step[step]
        mean, std = mean_std([v if v is not None else math.nan for _, v in points])
        minutes, _ = mean_std([seconds / 60 for seconds, _ in points])
        lines.append(f"| {step} | {minutes:.1f} | {format_number(mean)} ± {format_number(std)} | {len(points)} |")
    met = [(run["seed"], run.get("target_met_at")) for run in bench["runs"] if "target_met_at" in run]
    if met:
        parts = [
            f"seed {seed}: " + (f"step {at['step']}, {at['seconds'] / 60:.1f} min" if at else "not met")
            for seed, at in met
        ]
        lines += ["", f"First evaluation meeting the {key} target: " + "; ".join(parts) + "."]
    return lines


def results_png(results: dict[str, Any]) -> bytes:
    """results.png: the headline metric of each benchmark, one dot per seed (PNG bytes)."""
    from benchmarks.quality.figures import quality_png

    return quality_png(headline_panels(results))
