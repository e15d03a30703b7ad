"""The quality benchmark's pictures: results.png (the headline metric per seed) and curves.png
(time to quality). Repository tooling beside the runner, not part of the package."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ganplug.plots import as_number, encode_figure, new_figure


def quality_png(panels: list[dict[str, Any]]) -> bytes:
    """One panel per benchmark: ``{"name", "key", "seeds", "values", "mean", "target",
    "bound"}`` as a dot per seed (non-finite values left out), the mean as a solid line and the
    target's ``bound`` (None: not drawn) as a dashed one. Returns PNG bytes, 260 px per panel."""
    figure = new_figure(260 * max(1, len(panels)), 300, layout="constrained")
    for number, panel in enumerate(panels):
        axes = figure.add_subplot(1, max(1, len(panels)), number + 1)
        axes.set_title(f"{panel['name']}: {panel['key']}", fontsize=9, fontweight="bold")
        axes.tick_params(labelsize=8)
        axes.grid(True, axis="y", color="#e5e5e5", linewidth=0.6)
        seeds = list(panel["seeds"])
        values = np.array([as_number(v) for v in panel["values"]])
        positions = np.arange(len(seeds))
        finite = np.isfinite(values)
        axes.scatter(positions[finite], values[finite], s=30, c="darkorange", zorder=3)
        mean, bound = as_number(panel.get("mean")), panel.get("bound")
        if math.isfinite(mean):
            axes.axhline(mean, color="steelblue", linewidth=1.2)
        if bound is not None:
            axes.axhline(float(bound), color="green", linestyle="--", linewidth=1.2)
        axes.set_xticks(positions, [str(s) for s in seeds])
        axes.set_xlim(-0.6, len(seeds) - 0.4)
        mean_text = f"{mean:.4g}" if math.isfinite(mean) else "nan"
        axes.set_xlabel(
            f"seed\nmean {mean_text} (solid)\ntarget {panel.get('target') or '-'}"
            + (" (dashed)" if bound is not None else ""),
            fontsize=8,
        )
    return encode_figure(figure)


def curves_png(panels: list[dict[str, Any]]) -> bytes:
    """Time to quality: one panel per benchmark, ``{"name", "key", "curves": {seed: [(minutes,
    value), ...]}, "bound", "target"}``, a line per seed of ``value`` against training minutes and
    the target's ``bound`` (None: not drawn) dashed. Returns PNG bytes, 320 px per panel."""
    figure = new_figure(320 * max(1, len(panels)), 300, layout="constrained")
    for number, panel in enumerate(panels):
        axes = figure.add_subplot(1, max(1, len(panels)), number + 1)
        axes.set_title(f"{panel['name']}: {panel['key']}", fontsize=9, fontweight="bold")
        axes.tick_params(labelsize=8)
        axes.grid(True, color="#e5e5e5", linewidth=0.6)
        for seed, points in panel["curves"].items():
            kept = [(m, as_number(v)) for m, v in points if math.isfinite(as_number(v))]
            if kept:
                axes.plot([m for m, _ in kept], [v for _, v in kept], marker=".", linewidth=1.0, label=f"seed {seed}")
        bound = panel.get("bound")
        if bound is not None:
            axes.axhline(
                float(bound), color="green", linestyle="--", linewidth=1.2, label=f"target {panel.get('target')}"
            )
        axes.set_xlabel("training minutes (one CPU core)", fontsize=8)
        axes.legend(fontsize=7)
    return encode_figure(figure)
