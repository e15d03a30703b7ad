"""The example plugin plugins/ganplug-lsgan, installed for real with pip into a temporary folder,
seen by the ``ganplug`` command line through its entry point (PYTHONPATH=that folder)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_metrics

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "ganplug-lsgan"


@pytest.fixture(scope="session")
def lsgan_site(tmp_path_factory) -> Path:
    """A folder holding ganplug-lsgan as pip installs it (package + dist-info with the entry point).

    pip builds from a copy so the checkout gets no build/ or *.egg-info folders."""
    work = tmp_path_factory.mktemp("lsgan")
    source = work / "ganplug-lsgan"
    shutil.copytree(
        PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache", "tests")
    )
    target = work / "site"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "--target",
        str(target),
        str(source),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        pytest.fail(f"pip install of {PLUGIN} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    assert (target / "ganplug_lsgan" / "plugin.py").is_file()
    assert (target / "ganplug_lsgan-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


def ganplug(*args: str, site: Path | None, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m ganplug ARGS`` with the plugin installed (site) or not (None)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GANPLUG_") and k != "PYTHONPATH"}
    if site is not None:
        full_env["PYTHONPATH"] = str(site)
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "ganplug", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120
    )


def plugins_json(site: Path | None, cwd: Path, **env: str) -> dict[str, dict]:
    done = ganplug("plugins", "--json", site=site, cwd=cwd, **env)
    assert done.returncode == 0, done.stderr
    return {info["name"]: info for info in json.loads(done.stdout)}


def names(kind: str, site: Path | None, cwd: Path, **env: str) -> set[str]:
    done = ganplug("list", kind, "--json", site=site, cwd=cwd, **env)
    assert done.returncode == 0, done.stderr
    return {entry["name"] for entry in json.loads(done.stdout)}


def test_installed_plugin_is_listed(lsgan_site, tmp_path):
    plugins = plugins_json(lsgan_site, tmp_path)
    assert plugins["lsgan"] == {
        "name": "lsgan",
        "distribution": "ganplug-lsgan",
        "version": "0.1.0",
        "status": "ok",
        "error": None,
        "registers": {"loss": ["least-squares"], "dataset": ["swissroll"], "logger": ["csv"]},
    }
    assert plugins["ganplug"]["status"] == "ok"
    text = ganplug("plugins", site=lsgan_site, cwd=tmp_path)
    assert "lsgan  [ganplug-lsgan 0.1.0]  ok" in text.stdout
    assert text.stderr == ""


def test_installed_plugin_adds_a_loss_and_a_dataset(lsgan_site, tmp_path):
    losses = ganplug("list", "losses", site=lsgan_site, cwd=tmp_path)
    assert losses.returncode == 0, losses.stderr
    assert "least-squares (alias lsgan)  [lsgan]" in losses.stdout
    assert "bce" in losses.stdout  # the built-ins stay
    datasets = json.loads(ganplug("list", "datasets", "--json", site=lsgan_site, cwd=tmp_path).stdout)
    (swissroll,) = [d for d in datasets if d["name"] == "swissroll"]
    assert swissroll["plugin"] == "lsgan"
    assert swissroll["value_range"] is None
    assert [o["name"] for o in swissroll["options"]] == ["noise", "size"]


def test_not_installed_means_not_there(lsgan_site, tmp_path):
    assert "lsgan" not in plugins_json(None, tmp_path)
    assert "least-squares" not in names("losses", None, tmp_path)
    assert "swissroll" not in names("datasets", None, tmp_path)
    unknown = ganplug("train", "--loss", "least-squares", "--steps", "1", site=None, cwd=tmp_path)
    assert unknown.returncode != 0
    assert "unknown loss 'least-squares'" in unknown.stderr


@pytest.mark.parametrize("name", ["lsgan", "ganplug-lsgan"])
def test_disabled_by_entry_point_or_distribution_name(lsgan_site, tmp_path, name):
    env = {"GANPLUG_DISABLE_PLUGINS": name}
    info = plugins_json(lsgan_site, tmp_path, **env)["lsgan"]
    assert info["status"] == "disabled" and info["registers"] == {}
    assert "least-squares" not in names("losses", lsgan_site, tmp_path, **env)
    assert "swissroll" not in names("datasets", lsgan_site, tmp_path, **env)


def test_load_plugins_empty_means_builtins_only(lsgan_site, tmp_path):
    plugins = plugins_json(lsgan_site, tmp_path, GANPLUG_LOAD_PLUGINS="")
    assert plugins["lsgan"]["status"] == "disabled"
    assert [name for name, info in plugins.items() if info["status"] == "ok"] == ["ganplug"]
    assert names("losses", lsgan_site, tmp_path, GANPLUG_LOAD_PLUGINS="") == {
        "bce",
        "minimax",
        "wasserstein",
        "hinge",
        "relativistic",
    }
    loaded = plugins_json(lsgan_site, tmp_path, GANPLUG_LOAD_PLUGINS="lsgan")
    assert loaded["lsgan"]["status"] == "ok"


def _trainer_exists() -> bool:
    try:
        import ganplug.train
    except ImportError:
        return False
    return callable(getattr(ganplug.train, "train", None))


@pytest.mark.skipif(not _trainer_exists(), reason="ganplug.train.train is not written yet")
def test_train_with_the_plugin(lsgan_site, tmp_path):
    run = tmp_path / "run"
    done = ganplug(
        "train",
        "--arch",
        "mlp",
        "--arch-opt",
        "g_widths=16,16",
        "--arch-opt",
        "d_widths=16,16",
        "--loss",
        "least-squares",
        "--dataset",
        "swissroll",
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--out",
        str(run),
        "--quiet",
        site=lsgan_site,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    metrics = read_metrics(run)
    assert metrics, "metrics.jsonl is empty"
    assert {"d_loss", "g_loss", "d_real", "d_fake"} <= set(metrics[-1])
    config = (run / "config.toml").read_text()
    assert 'loss = "least-squares"' in config and 'dataset = "swissroll"' in config
    # Continuing the run needs the plugin: without it, a one-line error, no traceback.
    resumed = ganplug("train", "--resume", str(run), "--steps", "4", site=None, cwd=tmp_path)
    assert resumed.returncode != 0
    assert resumed.stderr == (
        "Error: this run's loss 'least-squares' comes from plugin 'lsgan' (ganplug-lsgan 0.1.0), which is not installed "
        "here: pip install 'ganplug-lsgan==0.1.0'\n"
    )
