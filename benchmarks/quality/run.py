"""Quality benchmarks: train the recipes of ``benchmarks/quality/`` over several seeds, score each
run with the registered metrics (:func:`ganplug.evaluation.evaluate`) and write a results table.
It is part of the repository, not of the installed package; from a checkout, with ganplug
installed::

    python benchmarks/quality/run.py --seeds 0,1,2,3,4 [--out DIR] [--steps N] [RECIPE ...]
    python -m benchmarks.quality.run ...          # the same, from the repository root

Every recipe is a ``ganplug train --config`` file plus a ``[quality]`` table with its headline
metric key, its targets and the baseline it is compared with (:mod:`benchmarks.quality.recipes`);
the rest of the file is read and validated exactly as the CLI reads it
(:func:`ganplug.train.config.resolve`). Run ``S`` of recipe ``NAME.toml`` trains into
``OUT/NAME/seed_S``; a run whose checkpoint at the final step exists is not trained again, a run
with an earlier checkpoint is resumed, so an interrupted sweep picks up where it stopped.
Evaluations are cached next to the run (``quality_eval.json``).

Writes ``OUT/results.json`` (every number), ``OUT/results.md`` (per benchmark: mean ± std over
seeds of every metric key, the number of seeds, the target and whether the mean meets it) and
``OUT/results.png`` (the headline metric of each benchmark, one dot per seed; matplotlib).
Time to quality: a recipe with ``eval_every`` (a training knob) logs its metrics while it trains;
results.md then tabulates the headline at each evaluated step against training minutes, with the
first evaluation at which each seed met every target, and ``OUT/curves.png`` draws it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if not __package__:  # python benchmarks/quality/run.py: import its siblings as benchmarks.quality.*
    if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
        del sys.path[0]  # not the folder itself, whose module names (report, recipes) are too generic
    sys.path.append(str(HERE.parents[1]))  # after site-packages: the installed ganplug stays first

from benchmarks.quality.recipes import Recipe, read_recipe, summarise  # noqa: E402
from benchmarks.quality.report import curve_panels, render_markdown, results_png  # noqa: E402
from ganplug.errors import GanplugError, UsageError  # noqa: E402

EVAL_FILE = "quality_eval.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
CURVES_PNG = "curves.png"


def _shown(path: Path) -> Path:
    """``path`` relative to the current directory where it lies below it (as results.md shows it)."""
    try:
        return Path(os.path.relpath(path)) if path.resolve().is_relative_to(Path.cwd().resolve()) else path
    except ValueError:  # another drive
        return path


def default_recipe_dir() -> Path:
    """This folder: ``benchmarks/quality`` of the checkout the runner lives in."""
    return _shown(HERE)


def default_recipes() -> list[Path]:
    return sorted(default_recipe_dir().glob("*.toml"))


# -- running ------------------------------------------------------------------------------------


def _final_checkpoint(run_dir: Path, steps: int) -> Path:
    from ganplug.train.checkpoint import CHECKPOINTS, step_file_name

    return run_dir / CHECKPOINTS / step_file_name(steps)


def _train_run(config: Any, run_dir: Path, quiet: bool) -> bool:
    """Train (or resume) ``config`` into ``run_dir``; False when its final checkpoint exists."""
    from ganplug.train import train
    from ganplug.train.rundir import has_checkpoint

    stream = io.StringIO() if quiet else None  # the trainer's start/done lines print even when quiet
    if _final_checkpoint(run_dir, config.steps).is_file():
        return False
    if has_checkpoint(run_dir):
        train(config, run_dir, resume_from=run_dir, quiet=quiet, stream=stream)
    else:
        if run_dir.exists():  # a run stopped before its first checkpoint: start it again
            shutil.rmtree(run_dir)
        train(config, run_dir, quiet=quiet, stream=stream)
    return True


def _evaluate_run(checkpoint: Path, run_dir: Path, steps: int, seed: int) -> dict[str, Any]:
    """``evaluate`` of ``checkpoint``, cached in ``run_dir/quality_eval.json``."""
    from ganplug.evaluation import evaluate

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


def read_curve(
    run_dir: Path, headline: str | None, targets: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Time to quality of one run, from the evaluations its metrics.jsonl logged (``eval_every``):
    ``[{"step", "seconds", "value"}]`` of the ``headline`` key (seconds: the run's training time
    then), and the first evaluation meeting every target its keys have (``{"step", "seconds"}``,
    None when none did)."""
    from ganplug.plots import read_records
    from ganplug.train.rundir import METRICS

    path = Path(run_dir) / METRICS
    if not headline or not path.is_file():
        return [], None
    curve, met_at = [], None
    for record in read_records(path)[1]:
        if "elapsed_s" not in record:  # written before evaluations carried the time
            continue
        values = {key: value for metric in record["eval"].values() for key, value in metric.items()}
        seconds = float(record["elapsed_s"])
        if headline in values:
            curve.append({"step": int(record["step"]), "seconds": seconds, "value": _clean(values[headline])})
        judged = [
            target.met(float(values[key]), values)
            for key, target in targets.items()
            if isinstance(values.get(key), (int, float))
        ]
        if met_at is None and len(judged) == len(targets) and all(judged):
            met_at = {"step": int(record["step"]), "seconds": seconds}
    return curve, met_at


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


def _baseline_runs(name: str, dataset: str, data_options: dict[str, Any], seeds: list[int]) -> list[dict[str, Any]]:
    """The metrics of the non-GAN baseline sampler ``name`` (:mod:`benchmarks.quality.baselines`),
    one run per seed, scored exactly as a generator's samples are."""
    from benchmarks.quality.baselines import BASELINES
    from ganplug.metrics import metric_context, prepare_metrics

    fit = BASELINES[name][2]
    built, _ = prepare_metrics(dataset)
    context = metric_context(dataset, data_options)
    runs = []
    for seed in seeds:
        draw = fit(dataset, data_options, seed)
        samples = draw(max(count for _, _, count in built))
        metrics = {
            spec.name: {k: _clean(float(v)) for k, v in metric(samples[:count], context).items()}
            for spec, metric, count in built
        }
        runs.append({"seed": seed, "bandwidth": getattr(draw, "bandwidth", None), "metrics": metrics})
    return runs


def compare_with_baseline(
    summary: dict[str, Any], baseline: dict[str, Any], lower_is_better: dict[str, bool]
) -> dict[str, bool]:
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
    from benchmarks.quality.baselines import BASELINES
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
    # validate all recipes before training any (their configs resolved as the CLI resolves them)
    read: dict[Path, list[Recipe]] = {
        recipe: [read_recipe(recipe, seed=seed, **given_steps) for seed in seeds] for recipe in recipes
    }
    for recipe, (first, *_) in read.items():
        if first.baseline and bare_dataset_name(first.config.dataset) not in BASELINES[first.baseline][0]:
            raise UsageError(
                f"{recipe}: the {first.baseline} baseline fits only the datasets "
                f"{', '.join(BASELINES[first.baseline][0])}, not {first.config.dataset!r}"
            )
    benchmarks: dict[str, Any] = {}
    for recipe in recipes:
        name = recipe.stem
        spec = read[recipe][0]
        runs = []
        dataset, data_options = None, {}
        for seed, config in zip(seeds, [r.config for r in read[recipe]]):
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
            curve, met_at = read_curve(run_dir, spec.headline, spec.targets)
            runs.append(
                {
                    "seed": seed,
                    "run_dir": str(run_dir),
                    "checkpoint": str(checkpoint),
                    "step": int(result["step"]),
                    "ema": bool(result.get("ema", False)),
                    "train_seconds": float(state.get("elapsed_s", math.nan)),
                    "trained_now": trained,
                    "metrics": result["metrics"],
                    **({"curve": curve, "target_met_at": met_at} if curve else {}),
                }
            )
        summary = summarise(runs, spec.targets)
        benchmarks[name] = {
            "recipe": str(recipe),
            "dataset": dataset,
            "steps": spec.config.steps,
            "headline": spec.headline,
            "runs": runs,
            "summary": summary,
        }
        if spec.baseline:
            say(f"{name}: scoring the {spec.baseline} baseline for seeds {seeds}")
            baseline_runs = _baseline_runs(spec.baseline, str(dataset), data_options, seeds)
            baseline_summary = summarise(baseline_runs, spec.targets)
            benchmarks[name]["baseline"] = {
                "name": spec.baseline,
                "runs": baseline_runs,
                "summary": baseline_summary,
                "gan_better": compare_with_baseline(summary, baseline_summary, spec.baseline_better),
            }
    results = {"seeds": seeds, "steps_override": steps, "benchmarks": benchmarks}
    (out_dir / RESULTS_JSON).write_text(json.dumps(_jsonable(results), indent=1) + "\n", encoding="utf-8")
    (out_dir / RESULTS_MD).write_text(render_markdown(results), encoding="utf-8")
    (out_dir / RESULTS_PNG).write_bytes(results_png(results))
    panels = curve_panels(results)
    if panels:
        from benchmarks.quality.figures import curves_png

        (out_dir / CURVES_PNG).write_bytes(curves_png(panels))
    return out_dir


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
        prog="python benchmarks/quality/run.py",
        description="Train the quality recipes over several seeds and write results.{json,md,png}.",
    )
    parser.add_argument(
        "recipes", nargs="*", type=Path, help=f"recipe TOML files (default: every *.toml in {default_recipe_dir()}/)"
    )
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4)")
    parser.add_argument(
        "--out",
        type=Path,
        default=default_recipe_dir() / "results",
        help=f"output folder (default {default_recipe_dir() / 'results'})",
    )
    parser.add_argument("--steps", type=int, default=None, help="override every recipe's steps")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        if args.steps is not None and args.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {args.steps}")
        recipes = list(args.recipes) or default_recipes()
        started = time.perf_counter()
        out = run_benchmarks(recipes, _parse_seeds(args.seeds), args.out, steps=args.steps, quiet=args.quiet, log=log)
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
        log(
            f"wrote {out / RESULTS_MD}, {out / RESULTS_JSON}, {out / RESULTS_PNG} "
            f"in {time.perf_counter() - started:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
