"""The quality-benchmark recipes (benchmarks/quality/*.toml) and the sweep of their runner,
benchmarks/quality/run.py (no part of the installed package; the repository root is on pytest's
pythonpath)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import read_metrics

from benchmarks.quality import recipes as quality_recipes
from benchmarks.quality import report
from benchmarks.quality import run as quality
from ganplug.cli import build_config
from ganplug.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "benchmarks" / "quality"
RECIPES = sorted(RECIPE_DIR.glob("*.toml"))


def targets_of(name: str) -> dict:
    """The [quality.targets] of benchmarks/quality/NAME.toml."""
    return quality_recipes.read_recipe(RECIPE_DIR / f"{name}.toml").targets


def test_the_runner_and_its_baselines_are_not_in_the_package():
    import ganplug
    import ganplug.metrics

    assert importlib.util.find_spec("ganplug.quality") is None
    assert importlib.util.find_spec("ganplug.metrics.baselines") is None
    package = Path(ganplug.__file__).parent
    assert not (package / "quality.py").exists() and not (package / "metrics" / "baselines.py").exists()
    assert quality.default_recipe_dir().resolve() == RECIPE_DIR


def test_the_four_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"ring8", "grid25", "gaussian", "digits"}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates_like_the_cli(recipe, tmp_path):
    read = quality_recipes.read_recipe(recipe, seed=3)
    config = read.config
    assert recipe.stem.partition("-")[0] == config.dataset  # NAME.toml: the dataset, or DATASET-VARIANT
    assert config.seed == 3
    assert config.steps >= 1000
    text = recipe.read_text(encoding="utf-8")
    assert text.startswith("#") and "CPU time" in text
    # every metric of the dataset has a target in the table
    assert read.targets
    assert read.headline in read.targets
    # the config is the CLI's for the same file without its [quality] table
    import tomli_w

    training, table = quality_recipes.read_quality_table(recipe)
    assert table and "quality" not in training
    plain = tmp_path / recipe.name
    plain.write_text(tomli_w.dumps(training), encoding="utf-8")
    assert config == build_config({"config_file": str(plain), "seed": 3, "out": "unused"})


def test_the_gaussian_targets_are_its_data_options():
    read = quality_recipes.read_recipe(RECIPE_DIR / "gaussian.toml")
    assert (read.targets["mean"].value, read.targets["std"].value) == (
        read.config.data_options["mean"],
        read.config.data_options["std"],
    )
    assert read.targets["mean"].tolerance == read.targets["std"].tolerance == 0.05


def test_target_texts_parse_and_judge():
    parse = quality_recipes.Target.parse
    assert parse("= 8").text() == "= 8" and parse(">= 97").text() == "≥ 97" and parse("≤ 0.02").text() == "≤ 0.02"
    assert parse("4 ± 0.05").text() == parse("4 +- 0.05").text() == "4 ± 0.05"
    relative = parse("<= 3 * fd_real_floor")
    assert relative == parse("≤ 3 × fd_real_floor")
    assert (
        relative.text() == "≤ 3 × fd_real_floor" and relative.text({"fd_real_floor": 5.0}) == "≤ 3 × fd_real_floor (15)"
    )
    assert relative.met(15.0, {"fd_real_floor": 5.0}) is True and relative.met(15.1, {"fd_real_floor": 5.0}) is False
    assert relative.met(1.0, {}) is None
    assert parse("= 8").met(8.0, {}) is True and parse("= 8").met(7.8, {}) is False
    assert parse(">= 97").met(math.nan, {}) is False
    for bad in ("97", "> 97", "about 4", "4 ± x", 97):
        with pytest.raises(ValueError):
            parse(bad)


def test_a_bad_quality_table_is_refused_naming_the_recipe(tmp_path):
    base = (RECIPE_DIR / "gaussian.toml").read_text(encoding="utf-8")
    for extra, message in [
        ("typo = 1\n", "unknown keys typo"),
        ('[quality.targets]\nks = "< 0.03"\n', "ks: '< 0.03' is no target"),
        ('[quality.baseline]\nname = "GMM"\n', "name 'GMM' is no baseline"),
    ]:
        recipe = tmp_path / "gaussian.toml"
        text = base.split("\n[quality]\n")[0] + "\n[quality]\n" + extra
        recipe.write_text(text, encoding="utf-8")
        with pytest.raises(UsageError, match=re.escape(f"{recipe}: [quality")) as info:
            quality_recipes.read_recipe(recipe)
        assert message in str(info.value)
    # a recipe without a [quality] table is a plain `ganplug train --config` file: no targets
    plain = tmp_path / "plain.toml"
    plain.write_text(base.split("# The quality runner")[0], encoding="utf-8")
    read = quality_recipes.read_recipe(plain)
    assert read.targets == {} and read.headline is None and read.baseline is None
    # the training part's mistakes name the recipe file
    (tmp_path / "typo.toml").write_text(base.replace('loss = "bce"', 'los = "bce"'), encoding="utf-8")
    with pytest.raises(
        UsageError, match=re.escape(f"{tmp_path / 'typo.toml'}: unknown key 'los' (did you mean 'loss'?)")
    ):
        quality_recipes.read_recipe(tmp_path / "typo.toml")


def _orange_dots(path: Path, panels: int) -> int:
    """The dots (connected darkorange blobs) of results.png, a PNG 260 px wide per panel."""
    from PIL import Image
    from scipy import ndimage

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] == 260 * panels
        rgb = np.asarray(image.convert("RGB")).astype(int)
    orange = (rgb[..., 0] > 200) & (rgb[..., 1] > 90) & (rgb[..., 1] < 190) & (rgb[..., 2] < 90)
    _, count = ndimage.label(orange)
    return count


def test_figure_draws_a_dot_per_finite_value_and_a_panel_per_benchmark(tmp_path):
    results = {
        "seeds": [0, 1, 2],
        "benchmarks": {
            "ring8": {
                "headline": "high_quality_pct",
                "runs": [{"seed": s} for s in (0, 1, 2)],
                "summary": {"high_quality_pct": {"values": [80.0, None, 84.0], "mean": 82.0, "target": "≥ 97"}},
            },
            "other": {
                "headline": None,
                "runs": [{"seed": s} for s in (0, 1, 2)],
                "summary": {"score": {"values": [1.0, 2.0, float("nan")], "mean": 1.5, "target": None}},
            },
        },
    }
    panels = report.headline_panels(results)
    assert [(p["name"], p["key"], p["bound"]) for p in panels] == [
        ("ring8", "high_quality_pct", 97.0),
        ("other", "score", None),
    ]
    from benchmarks.quality.figures import quality_png

    (tmp_path / "fig.png").write_bytes(quality_png(panels))
    assert _orange_dots(tmp_path / "fig.png", panels=2) == 4  # None and NaN are not drawn


def _tiny_recipe(src: Path, dst: Path) -> Path:
    """``src`` with tiny model widths (steps are overridden by the sweep)."""
    text = src.read_text(encoding="utf-8")
    text = re.sub(r'^g_widths = ".*"$', 'g_widths = "8"', text, flags=re.M)
    text = re.sub(r'^d_widths = ".*"$', 'd_widths = "8"', text, flags=re.M)
    text = re.sub(r"^batch_size = \d+$", "batch_size = 16", text, flags=re.M)
    text = 'device = "cpu"\n' + text  # top-level keys must come before the first [table]
    dst.write_text(text, encoding="utf-8")
    return dst


def test_tiny_sweep_writes_results_and_resumes(tmp_path):
    recipes = [_tiny_recipe(RECIPE_DIR / f"{name}.toml", tmp_path / f"{name}.toml") for name in ("ring8", "gaussian")]
    out = tmp_path / "results"
    seeds = [0, 1]
    assert quality.run_benchmarks(recipes, seeds, out, steps=2) == out

    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == seeds
    expected = {
        "ring8": ("modes", {"modes_captured", "high_quality_pct", "reverse_kl"}),
        "gaussian": ("gaussian-fit", {"mean", "std", "ks"}),
    }
    for name, (metric, keys) in expected.items():
        bench = results["benchmarks"][name]
        assert len(bench["runs"]) == 2
        assert [r["seed"] for r in bench["runs"]] == seeds
        for run in bench["runs"]:
            assert run["step"] == 2
            assert keys <= set(run["metrics"][metric])
        assert keys <= set(bench["summary"])
        for key in keys:
            assert bench["summary"][key]["n"] == 2
            assert bench["summary"][key]["target"]

    md = (out / "results.md").read_text()
    for name, (metric, keys) in expected.items():
        assert f"## {name}" in md
        for key in keys:
            rows = [line for line in md.splitlines() if line.startswith(f"| {metric} | {key} |")]
            assert len(rows) == 1 and "±" in rows[0], key

    finite = sum(
        1
        for b in results["benchmarks"].values()
        for v in b["summary"][b["headline"]]["values"]
        if v is not None and math.isfinite(v)
    )
    assert finite == 4  # ring8 high_quality_pct and gaussian ks are always finite
    assert not (out / "results.svg").exists()
    assert _orange_dots(out / "results.png", panels=2) == finite

    # a second sweep trains nothing again: the final checkpoints are untouched
    checkpoints = sorted(out.glob("*/seed_*/checkpoints/step_000002.pt"))
    assert len(checkpoints) == 4
    mtimes = [p.stat().st_mtime_ns for p in checkpoints]
    quality.run_benchmarks(recipes, seeds, out, steps=2)
    assert [p.stat().st_mtime_ns for p in checkpoints] == mtimes
    again = json.loads((out / "results.json").read_text())
    assert not any(r["trained_now"] for b in again["benchmarks"].values() for r in b["runs"])
    assert again["benchmarks"]["ring8"]["summary"] == results["benchmarks"]["ring8"]["summary"]


def test_time_to_quality_is_read_from_the_evaluations_of_the_run(tmp_path):
    recipe = _tiny_recipe(RECIPE_DIR / "ring8.toml", tmp_path / "ring8.toml")
    text = recipe.read_text(encoding="utf-8")
    recipe.write_text("eval_every = 1\n" + re.sub(r"^eval_every = \d+$", "", text, flags=re.M), encoding="utf-8")
    out = tmp_path / "results"
    quality.run_benchmarks([recipe], [0], out, steps=3)
    run = json.loads((out / "results.json").read_text())["benchmarks"]["ring8"]["runs"][0]
    logged = [r for r in read_metrics(out / "ring8" / "seed_0") if "eval" in r]
    assert [p["step"] for p in run["curve"]] == [1, 2, 3]
    assert [p["value"] for p in run["curve"]] == [r["eval"]["modes"]["high_quality_pct"] for r in logged]
    assert [p["seconds"] for p in run["curve"]] == [r["elapsed_s"] for r in logged]
    assert run["curve"][-1]["seconds"] <= run["train_seconds"]
    assert run["target_met_at"] is None  # 3 steps of an 8-wide MLP meet no ring8 target
    md = (out / "results.md").read_text()
    assert "Time to quality (high_quality_pct while training, one CPU core):" in md
    assert [line.split(" | ")[0] for line in md.splitlines() if re.match(r"^\| \d+ \| ", line)] == ["| 1", "| 2", "| 3"]
    assert "seed 0: not met" in md
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_first_evaluation_meeting_every_target_is_the_time_to_quality(tmp_path):
    targets = quality_recipes.read_recipe(RECIPE_DIR / "ring8.toml").targets
    good = {"modes_captured": 8, "high_quality_pct": 99.0, "reverse_kl": 0.001}
    lines = [
        {"step": 10, "d_loss": 1.0, "g_loss": 1.0, "elapsed_s": 1.0},
        {"step": 10, "eval": {"modes": {**good, "high_quality_pct": 50.0}}},  # from before elapsed_s: skipped
        {"step": 20, "elapsed_s": 2.0, "eval": {"modes": {**good, "high_quality_pct": 50.0}}},
        {"step": 30, "elapsed_s": 3.0, "eval": {"modes": {**good, "reverse_kl": 0.5}}},  # HQ met, KL not
        {"step": 40, "elapsed_s": 4.0, "eval": {"modes": good}},
        {"step": 50, "elapsed_s": 5.0, "eval": {"modes": good}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    curve, met_at = quality.read_curve(tmp_path, "high_quality_pct", targets)
    assert curve == [
        {"step": s, "seconds": s / 10, "value": v} for s, v in ((20, 50.0), (30, 99.0), (40, 99.0), (50, 99.0))
    ]
    assert met_at == {"step": 40, "seconds": 4.0}
    assert quality.read_curve(tmp_path / "none", "high_quality_pct", targets) == ([], None)


def test_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7):
        xs = rng.normal(size=n).tolist()
        mean, std = quality_recipes.mean_std(xs)
        assert mean == pytest.approx(np.mean(xs), rel=1e-12)
        assert std == pytest.approx(np.std(xs, ddof=1), rel=1e-12)
    assert quality_recipes.mean_std([2.5]) == (2.5, 0.0)
    assert all(math.isnan(v) for v in quality_recipes.mean_std([]))


def test_summary_targets_and_markdown():
    runs = [
        {"metrics": {"modes": {"modes_captured": 8.0, "high_quality_pct": 98.0, "reverse_kl": 0.01}}},
        {"metrics": {"modes": {"modes_captured": 7.0, "high_quality_pct": 96.0, "reverse_kl": 0.05}}},
    ]
    summary = quality_recipes.summarise(runs, targets_of("ring8"))
    assert summary["modes_captured"]["mean"] == pytest.approx(7.5)
    assert summary["modes_captured"]["std"] == pytest.approx(np.std([8.0, 7.0], ddof=1))
    assert summary["modes_captured"]["met"] is False
    assert summary["high_quality_pct"]["met"] is True  # mean 97 >= 97
    assert summary["reverse_kl"]["met"] is False  # mean 0.03 > 0.02
    digits = quality_recipes.summarise(
        [{"metrics": {"digits-quality": {"fd": 2.0, "fd_real_floor": 1.0, "classes_covered": 10.0}}}],
        targets_of("digits"),
    )
    assert digits["fd"]["met"] is True and digits["classes_covered"]["met"] is True
    gauss = quality_recipes.summarise(
        [{"metrics": {"gaussian-fit": {"mean": 4.04, "std": 1.31, "ks": 0.02}}}], targets_of("gaussian")
    )
    assert gauss["mean"]["met"] is True and gauss["std"]["met"] is False and gauss["ks"]["met"] is True


def test_main_reports_errors_in_one_line(tmp_path, capsys):
    assert quality.main([str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: no recipe file") and "\n" not in err
    assert quality.main(["--seeds", "a,b", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().startswith("Error: --seeds")
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "mlp"\nloss = "wasserstien"\n')
    assert quality.main([str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "wasserstien" in err and "\n" not in err


def test_the_baseline_is_compared_and_shown_beside_the_gan():
    gan = quality_recipes.summarise(
        [{"metrics": {"digits-quality": {"fd": 8.0, "fd_real_floor": 5.0, "density": 0.9}}}], targets_of("digits")
    )
    kde = quality_recipes.summarise(
        [{"metrics": {"digits-quality": {"fd": 6.0, "fd_real_floor": 5.0, "density": 0.6}}}], targets_of("digits")
    )
    better = quality.compare_with_baseline(gan, kde, {"fd": True, "density": False, "precision": False})
    digits = quality_recipes.read_recipe(RECIPE_DIR / "digits.toml")
    assert digits.baseline == "PCA+KDE"
    assert digits.baseline_better == {"fd": True, "precision": False, "density": False, "coverage": False}
    assert better == {"fd": False, "density": True}  # precision: in neither summary
    results = {
        "seeds": [0],
        "benchmarks": {
            "digits": {
                "recipe": "digits.toml",
                "dataset": "digits",
                "steps": 1,
                "headline": "fd",
                "runs": [{"seed": 0, "train_seconds": 1.0}],
                "summary": gan,
                "baseline": {"name": "PCA+KDE", "runs": [], "summary": kde, "gan_better": better},
            }
        },
    }
    text = report.render_markdown(results)
    assert "| metric | key | mean ± std | n | target | met | PCA+KDE (same seeds) |" in text
    assert "| digits-quality | fd | 8 ± 0 | 1 | ≤ 3 × fd_real_floor (15) | yes | 6 ± 0 |" in text
    assert "fd: PCA+KDE better, density: GAN better." in text
