"""The quality recipes: a ``ganplug train --config`` file plus the runner's ``[quality]`` table.

::

    [quality]
    headline = "high_quality_pct"   # the metric key results.png plots (default: the first key)

    [quality.targets]               # judged on the mean over seeds
    modes_captured = "= 8"
    high_quality_pct = ">= 97"      # also "<= X", "C ± T" (or "C +- T")
    fd = "<= 3 × fd_real_floor"     # a bound times the mean of another key (or "*")

    [quality.baseline]              # a non-GAN sampler scored beside the GAN (baselines.py)
    name = "PCA+KDE"
    better = { fd = "lower", precision = "higher" }   # the keys compared, and which way is better

``ganplug train --config`` does not know the ``[quality]`` table: :func:`read_recipe` takes it
out and resolves the rest as the CLI resolves a ``--config`` file
(:func:`ganplug.train.config.resolve`). Also here: the statistics over seeds (:func:`mean_std`,
the standard library's :mod:`statistics`) and :func:`summarise`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ganplug.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

QUALITY_KEYS = {"headline", "targets", "baseline"}
BASELINE_KEYS = {"name", "better"}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOUND = re.compile(rf"^(=|>=|≥|<=|≤)\s*({_NUMBER})(?:\s*[*×]\s*([A-Za-z_][\w.-]*))?$")
_WITHIN = re.compile(rf"^({_NUMBER})\s*(?:±|\+-|\+/-)\s*({_NUMBER})$")
_SHOWN = {"=": "=", ">=": "≥", "≥": "≥", "<=": "≤", "≤": "≤"}


@dataclasses.dataclass(frozen=True)
class Target:
    """One target of ``[quality.targets]``: ``op`` is "=", "≥", "≤" or "±"; the bound is
    ``value`` (times the mean of ``per`` when given); "±" means within ``tolerance`` of ``value``."""

    op: str
    value: float
    per: str | None = None
    tolerance: float | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"= 8"``, ``">= 97"``, ``"≤ 0.02"``, ``"4 ± 0.05"``, ``"<= 3 × fd_real_floor"``."""
        if not isinstance(text, str):
            raise ValueError(f'expected a string like ">= 97" or "4 ± 0.05", got {text!r}')
        stripped = text.strip()
        match = _BOUND.match(stripped)
        if match:
            return cls(_SHOWN[match.group(1)], float(match.group(2)), per=match.group(3))
        match = _WITHIN.match(stripped)
        if match:
            return cls("±", float(match.group(1)), tolerance=float(match.group(2)))
        raise ValueError(f'{text!r} is no target: use "= X", ">= X", "<= X", "C ± T" or "<= X × KEY"')

    def text(self, means: dict[str, float] | None = None) -> str:
        """As results.md shows it: ``"≥ 97"``, ``"4 ± 0.05"``, ``"≤ 3 × fd_real_floor (16.9)"``."""
        if self.op == "±":
            return f"{self.value:g} ± {self.tolerance:g}"
        if self.per is None:
            return f"{self.op} {self.value:g}"
        text = f"{self.op} {self.value:g} × {self.per}"
        bound = self.bound(means or {})
        return text + (f" ({bound:.3g})" if bound is not None and math.isfinite(bound) else "")

    def bound(self, means: dict[str, float]) -> float | None:
        """The number the mean is compared with (None: ``per`` has no mean)."""
        if self.per is None:
            return self.value
        per = means.get(self.per)
        return None if per is None else self.value * float(per)

    def met(self, mean: float, means: dict[str, float]) -> bool | None:
        """Whether ``mean`` meets the target (None: ``per`` has no mean)."""
        if self.op == "±":
            return abs(mean - self.value) <= self.tolerance
        bound = self.bound(means)
        if bound is None:
            return None
        if self.op == "=":
            return abs(mean - bound) <= 1e-9 * max(1.0, abs(bound))
        return mean >= bound if self.op == "≥" else mean <= bound


@dataclasses.dataclass
class Recipe:
    """A recipe file: its training configuration (``config``, what ``resolve`` made of the
    file without the ``[quality]`` table) and the runner's table."""

    path: Path
    config: Any
    headline: str | None = None
    targets: dict[str, Target] = dataclasses.field(default_factory=dict)
    baseline: str | None = None
    baseline_better: dict[str, bool] = dataclasses.field(default_factory=dict)  # key -> lower is better

    @property
    def name(self) -> str:
        return self.path.stem


def read_quality_table(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(training part, [quality] table)`` of the TOML file ``path``."""
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"no recipe file {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{path}: not valid TOML ({error})") from None
    quality = values.pop("quality", {})
    if not isinstance(quality, dict):
        raise UsageError(f"{path}: quality must be a table ([quality])")
    return values, quality


def parse_quality(path: Path, table: dict[str, Any]) -> dict[str, Any]:
    """The checked ``[quality]`` table of ``path`` as :class:`Recipe` fields."""
    unknown = sorted(set(table) - QUALITY_KEYS)
    if unknown:
        raise UsageError(
            f"{path}: [quality] has unknown keys {', '.join(unknown)} (known: {', '.join(sorted(QUALITY_KEYS))})"
        )
    headline = table.get("headline")
    if headline is not None and not isinstance(headline, str):
        raise UsageError(f"{path}: [quality] headline must be a metric key (a string), got {headline!r}")
    raw_targets = table.get("targets", {})
    if not isinstance(raw_targets, dict):
        raise UsageError(f'{path}: [quality.targets] must be a table of KEY = "TARGET"')
    targets = {}
    for key, text in raw_targets.items():
        try:
            targets[key] = Target.parse(text)
        except ValueError as error:
            raise UsageError(f"{path}: [quality.targets] {key}: {error}") from None
    fields: dict[str, Any] = {"headline": headline, "targets": targets}
    baseline = table.get("baseline")
    if baseline is not None:
        from benchmarks.quality.baselines import BASELINES

        if not isinstance(baseline, dict):
            raise UsageError(f"{path}: [quality.baseline] must be a table with name and better")
        unknown = sorted(set(baseline) - BASELINE_KEYS)
        if unknown:
            raise UsageError(f"{path}: [quality.baseline] has unknown keys {', '.join(unknown)}")
        name = baseline.get("name")
        if name not in BASELINES:
            raise UsageError(f"{path}: [quality.baseline] name {name!r} is no baseline (known: {', '.join(BASELINES)})")
        better = baseline.get("better", {})
        if not isinstance(better, dict) or any(v not in ("lower", "higher") for v in better.values()):
            raise UsageError(f'{path}: [quality.baseline] better must map metric keys to "lower" or "higher"')
        fields.update(baseline=name, baseline_better={key: way == "lower" for key, way in better.items()})
    return fields


def read_recipe(path: Path | str, **changes: Any) -> Recipe:
    """Read and validate the recipe ``path``: its ``[quality]`` table here, the rest as
    ``ganplug train --config`` reads a file (:func:`ganplug.train.config.resolve`), with
    ``changes`` (TrainConfig fields, e.g. ``seed``, ``steps``) over it as a command line would."""
    from ganplug.train.config import config_from_dict, resolve

    path = Path(path)
    training, quality = read_quality_table(path)
    fields = parse_quality(path, quality)
    config = dataclasses.replace(config_from_dict(training, str(path)), **changes)
    return Recipe(path=path, config=resolve(config), **fields)


# -- statistics over seeds ----------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) of ``values``.
    NaN in, NaN out; ``(nan, nan)`` for no values."""
    xs = [float(v) for v in values]
    if not xs:
        return math.nan, math.nan
    mean = statistics.fmean(xs)
    if not all(math.isfinite(x) for x in xs):
        return mean, math.nan
    return mean, statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarise(runs: list[dict[str, Any]], targets: dict[str, Target]) -> dict[str, Any]:
    """``{key: {"metric", "mean", "std", "n", "values", "target", "met"}}`` over ``runs``
    (each with ``metrics: {metric: {key: value}}``), keys in first-seen order; ``targets``
    (a recipe's) judge the means."""
    order: list[tuple[str, str]] = []
    values: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        for metric, scores in run["metrics"].items():
            for key, value in scores.items():
                if (metric, key) not in values:
                    order.append((metric, key))
                    values[(metric, key)] = []
                values[(metric, key)].append(float(value) if value is not None else math.nan)
    keys = [k for _, k in order]
    summary: dict[str, Any] = {}
    for metric, key in order:
        name = key if keys.count(key) == 1 else f"{metric}.{key}"
        mean, std = mean_std(values[(metric, key)])
        summary[name] = {
            "metric": metric,
            "mean": mean,
            "std": std,
            "n": len(values[(metric, key)]),
            "values": values[(metric, key)],
            "target": None,
            "met": None,
        }
    means = {name: entry["mean"] for name, entry in summary.items()}
    for key, target in targets.items():
        if key in summary:
            summary[key]["target"] = target.text(means)
            summary[key]["met"] = target.met(means[key], means)
    return summary
