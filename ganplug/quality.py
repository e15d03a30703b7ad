"""Quality benchmarks: train the recipes of ``benchmarks/quality/`` over several seeds, score each
run with the registered metrics (:func:`ganplug.metrics.evaluate`) and write a results table.

::

    python -m ganplug.quality --seeds 0,1,2,3,4 --out benchmarks/quality/results [--steps N] [RECIPE ...]

Every recipe is a ``ganplug train --config`` file, read and validated exactly as the CLI reads
it (:func:`ganplug.cli.build_config`). Run ``S`` of recipe ``NAME.toml`` trains into
``OUT/NAME/seed_S``; a run whose checkpoint at the final step exists is not trained again, a run
with an earlier checkpoint is resumed, so an interrupted sweep picks up where it stopped.
Evaluations are cached next to the run (``quality_eval.json``).

Writes ``OUT/results.json`` (every number), ``OUT/results.md`` (per benchmark: mean ± std over
seeds of every metric key, the number of seeds, the target and whether the mean meets it) and
``OUT/results.png`` (the headline metric of each benchmark, one dot per seed; matplotlib).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ganplug.errors import GanplugError, UsageError

EVAL_FILE = "quality_eval.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"

# dataset -> the metric key plotted in results.png
HEADLINE = {
    "ring8": "high_quality_pct",
    "grid25": "high_quality_pct",
    "gaussian": "ks",
    "digits": "fd",
}


def default_recipe_dir() -> Path:
    """``benchmarks/quality`` of the current directory, else of the source checkout."""
    here = Path("benchmarks") / "quality"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1] / "benchmarks" / "quality"


def default_recipes() -> list[Path]:
    return sorted(default_recipe_dir().glob("*.toml"))


# -- aggregation and targets --------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) of ``values``.
    NaN in, NaN out; ``(nan, nan)`` for no values."""
    xs = [float(v) for v in values]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, 0.0 if math.isfinite(mean) else math.nan
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var)


Target = tuple[str, Callable[[dict[str, float]], bool]]


def targets(dataset: str, data_options: dict[str, Any]) -> dict[str, Target]:
    """``{key: (text, met(means))}`` for the metric keys of ``dataset`` with a known target;
    ``met`` takes the per-key means of a benchmark."""
    if dataset == "ring8":
        return {
            "modes_captured": ("= 8", lambda m: m["modes_captured"] >= 8.0 - 1e-9),
            "high_quality_pct": ("≥ 97", lambda m: m["high_quality_pct"] >= 97.0),
            "reverse_kl": ("≤ 0.02", lambda m: m["reverse_kl"] <= 0.02),
        }
    if dataset == "grid25":
        return {
            "modes_captured": ("= 25", lambda m: m["modes_captured"] >= 25.0 - 1e-9),
            "high_quality_pct": ("≥ 95", lambda m: m["high_quality_pct"] >= 95.0),
            "reverse_kl": ("≤ 0.03", lambda m: m["reverse_kl"] <= 0.03),
        }
    if dataset == "gaussian":
        mu = float(data_options.get("mean", 4.0))
        sd = float(data_options.get("std", 1.25))
        return {
            "mean": (f"{mu:g} ± 0.05", lambda m: abs(m["mean"] - mu) <= 0.05),
            "std": (f"{sd:g} ± 0.05", lambda m: abs(m["std"] - sd) <= 0.05),
            "ks": ("≤ 0.03", lambda m: m["ks"] <= 0.03),
        }
    if dataset == "digits":
        floor = data_options.get("_fd_floor")
        fd_text = "≤ 3 × fd_real_floor" + (f" ({3 * floor:.3g})" if isinstance(floor, float) and math.isfinite(floor) else "")
        return {
            "classes_covered": ("= 10", lambda m: m["classes_covered"] >= 10.0 - 1e-9),
            "fd": (fd_text, lambda m: m["fd"] <= 3.0 * m["fd_real_floor"]),
        }
    return {}


def summarise(runs: list[dict[str, Any]], dataset: str, data_options: dict[str, Any]) -> dict[str, Any]:
    """``{key: {"metric", "mean", "std", "n", "values", "target", "met"}}`` over ``runs``
    (each with ``metrics: {metric: {key: value}}``), keys in first-seen order."""
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
        summary[name] = {"metric": metric, "mean": mean, "std": std, "n": len(values[(metric, key)]),
                         "values": values[(metric, key)], "target": None, "met": None}
    means = {name: entry["mean"] for name, entry in summary.items()}
    if dataset == "digits" and "fd_real_floor" in means:
        data_options = dict(data_options, _fd_floor=means["fd_real_floor"])
    for key, (text, met) in targets(dataset, data_options).items():
        if key in summary:
            summary[key]["target"] = text
            try:
                summary[key]["met"] = bool(met(means))
            except (KeyError, TypeError, ValueError):
                summary[key]["met"] = None
    return summary


# -- running ------------------------------------------------------------------------------------


def _final_checkpoint(run_dir: Path, steps: int) -> Path:
    return run_dir / "checkpoints" / ("step_%06d.pt" % steps)


def _train_run(config: Any, run_dir: Path, quiet: bool) -> bool:
    """Train (or resume) ``config`` into ``run_dir``; False when its final checkpoint exists."""
    from ganplug.train import train

    stream = io.StringIO() if quiet else None  # the trainer's start/done lines print even when quiet
    if _final_checkpoint(run_dir, config.steps).is_file():
        return False
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.glob("*.pt")):
        train(config, run_dir, resume_from=run_dir, quiet=quiet, stream=stream)
    else:
        if run_dir.exists():  # a run stopped before its first checkpoint: start it again
            shutil.rmtree(run_dir)
        train(config, run_dir, quiet=quiet, stream=stream)
    return True


def _evaluate_run(checkpoint: Path, run_dir: Path, steps: int, seed: int) -> dict[str, Any]:
    """``evaluate`` of ``checkpoint``, cached in ``run_dir/quality_eval.json``."""
    from ganplug.metrics import evaluate

    cache = run_dir / EVAL_FILE
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if cached.get("step") == steps and cached.get("seed") == seed and cached.get("metrics"):
                return cached
        except (OSError, ValueError):
            pass
    result = evaluate(checkpoint, seed=seed)
    result["metrics"] = {m: {k: _clean(v) for k, v in s.items()} for m, s in result["metrics"].items()}
    cache.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def _clean(value: Any) -> Any:
    """NaN/inf -> None, so results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return _clean(obj)


# dataset -> (baseline name, the keys compared with it and whether lower is better)
BASELINES = {"digits": ("PCA+KDE", {"fd": True, "precision": False, "density": False, "coverage": False})}


def _baseline_runs(dataset: str, data_options: dict[str, Any], seeds: list[int]) -> list[dict[str, Any]]:
    """The metrics of the dataset's non-GAN baseline sampler (:mod:`ganplug.metrics.baselines`),
    one run per seed, scored exactly as a generator's samples are."""
    from ganplug.metrics import prepare_metrics
    from ganplug.metrics.baselines import pca_kde
    from ganplug.metrics.images import digits_data, image_size_of

    built, _ = prepare_metrics(dataset)
    images, _ = digits_data(image_size_of(dataset, data_options))
    runs = []
    for seed in seeds:
        draw = pca_kde(images, seed=seed)
        samples = draw(max(count for _, _, count in built))
        metrics = {spec.name: {k: _clean(float(v)) for k, v in metric(samples[:count], dataset=dataset,
                                                                      dataset_options=data_options).items()}
                   for spec, metric, count in built}
        runs.append({"seed": seed, "bandwidth": draw.bandwidth, "metrics": metrics})
    return runs


def compare_with_baseline(summary: dict[str, Any], baseline: dict[str, Any], lower_is_better: dict[str, bool]) -> dict[str, bool]:
    """``{key: GAN mean better than the baseline's mean}`` for the compared keys both have."""
    better = {}
    for key, lower in lower_is_better.items():
        if key in summary and key in baseline:
            ours, theirs = summary[key]["mean"], baseline[key]["mean"]
            if math.isfinite(ours) and math.isfinite(theirs):
                better[key] = ours < theirs if lower else ours > theirs
    return better


def run_benchmarks(
    recipes: list[Path],
    seeds: list[int],
    out_dir: Path,
    *,
    steps: int | None = None,
    quiet: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train every recipe for every seed into ``out_dir/NAME/seed_S`` (skipping finished runs,
    resuming interrupted ones), evaluate each and write results.json, results.md and results.png
    to ``out_dir``; returns ``out_dir``. ``steps`` overrides every recipe's ``steps``."""
    from ganplug.cli import build_config
    from ganplug.metrics import bare_dataset_name
    from ganplug.train.checkpoint import load_checkpoint

    recipes = [Path(r) for r in recipes]
    seeds = [int(s) for s in seeds]
    if not recipes:
        raise UsageError("no recipes given (and no *.toml in benchmarks/quality/)")
    if not seeds:
        raise UsageError("no seeds given: pass e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"seeds repeat: {seeds}")
    names = [r.stem for r in recipes]
    if len(set(names)) != len(names):
        raise UsageError(f"recipe names repeat: {names} (each NAME.toml gives the folder OUT/NAME)")
    for recipe in recipes:
        if not recipe.is_file():
            raise UsageError(f"no recipe file {recipe}")
    say = log or (lambda message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    given_steps = {"steps": int(steps)} if steps is not None else {}
    # validate all recipes before training any
    configs = {
        recipe: [build_config({"config_file": str(recipe), "seed": seed, **given_steps}) for seed in seeds]
        for recipe in recipes
    }
    benchmarks: dict[str, Any] = {}
    for recipe in recipes:
        name = recipe.stem
        runs = []
        dataset, data_options = None, {}
        for seed, config in zip(seeds, configs[recipe]):
            run_dir = out_dir / name / f"seed_{seed}"
            say(f"{name} seed {seed}: training {config.steps} steps into {run_dir}")
            trained = _train_run(config, run_dir, quiet)
            if not trained:
                say(f"{name} seed {seed}: already trained, skipped")
            checkpoint = _final_checkpoint(run_dir, config.steps)
            if not checkpoint.is_file():
                raise GanplugError(f"{run_dir}: training ended without {checkpoint}")
            state = load_checkpoint(checkpoint)
            result = _evaluate_run(checkpoint, run_dir, config.steps, seed)
            dataset = result["dataset"]
            data_options = dict(state["config"].get("data_options") or {})
            if dataset is None:
                dataset = bare_dataset_name(config.dataset)
            runs.append({
                "seed": seed,
                "run_dir": str(run_dir),
                "checkpoint": str(checkpoint),
                "step": int(result["step"]),
                "ema": bool(result.get("ema", False)),
                "train_seconds": float(state.get("elapsed_s", math.nan)),
                "trained_now": trained,
                "metrics": result["metrics"],
            })
        summary = summarise(runs, str(dataset), data_options)
        benchmarks[name] = {
            "recipe": str(recipe),
            "dataset": dataset,
            "steps": configs[recipe][0].steps,
            "headline": HEADLINE.get(str(dataset)),
            "runs": runs,
            "summary": summary,
        }
        if dataset in BASELINES:
            baseline_name, compared = BASELINES[str(dataset)]
            say(f"{name}: scoring the {baseline_name} baseline for seeds {seeds}")
            baseline_runs = _baseline_runs(str(dataset), data_options, seeds)
            baseline_summary = summarise(baseline_runs, str(dataset), {})
            benchmarks[name]["baseline"] = {
                "name": baseline_name,
                "runs": baseline_runs,
                "summary": baseline_summary,
                "gan_better": compare_with_baseline(summary, baseline_summary, compared),
            }
    results = {"seeds": seeds, "steps_override": steps, "benchmarks": benchmarks}
    (out_dir / RESULTS_JSON).write_text(json.dumps(_jsonable(results), indent=1) + "\n", encoding="utf-8")
    (out_dir / RESULTS_MD).write_text(render_markdown(results), encoding="utf-8")
    from ganplug.plots import quality_png

    (out_dir / RESULTS_PNG).write_bytes(quality_png(headline_panels(results)))
    return out_dir


# -- writing ------------------------------------------------------------------------------------


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
    if name == "PCA+KDE":
        return "15 principal components, Gaussian KDE with the 5-fold cross-validated bandwidth; ganplug.metrics.baselines"
    return name


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


# -- command line -------------------------------------------------------------------------------


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--seeds expects integers like 0,1,2, got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds is empty")
    return seeds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ganplug.quality",
        description="Train the quality recipes over several seeds and write results.{json,md,png}.",
    )
    parser.add_argument("recipes", nargs="*", type=Path,
                        help="recipe TOML files (default: every *.toml in benchmarks/quality/)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/quality/results"),
                        help="output folder (default benchmarks/quality/results)")
    parser.add_argument("--steps", type=int, default=None, help="override every recipe's steps")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        if args.steps is not None and args.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {args.steps}")
        recipes = list(args.recipes) or default_recipes()
        started = time.perf_counter()
        out = run_benchmarks(recipes, _parse_seeds(args.seeds), args.out, steps=args.steps,
                             quiet=args.quiet, log=log)
    except GanplugError as error:
        print(f"Error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("Error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    if log:
        log(f"wrote {out / RESULTS_MD}, {out / RESULTS_JSON}, {out / RESULTS_PNG} "
            f"in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
