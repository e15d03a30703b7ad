"""The csv logger: ganplug's logger checks, a real run's rows against its metrics.jsonl, and a
resume from an older step dropping the rows past it."""

from __future__ import annotations

import csv
import io
import json

import pytest

import ganplug.registry
import ganplug.testing
import ganplug_lsgan.plugin
from ganplug.errors import GanplugError
from ganplug.registry import Registry
from ganplug.train import TrainConfig, train
from ganplug_lsgan.csvlog import csv_logger


@pytest.fixture
def with_plugin(monkeypatch):
    """ganplug's registry with this plugin loaded (as its entry point would when installed)."""
    registry = Registry(entry_points=[], extra_plugins=[("lsgan", ganplug_lsgan.plugin)], report=False)
    monkeypatch.setattr(ganplug.registry, "_REGISTRY", registry)
    return registry


def rows(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_logger_passes_ganplugs_checks(with_plugin, tmp_path):
    spec = with_plugin.resolve("logger", "csv")
    ganplug.testing.check_logger(spec, run_dir=tmp_path, filename="log.csv")
    written = rows(tmp_path / "log.csv")
    assert [row["step"] for row in written] == ["1", "2"]
    assert written[0]["d_loss"] == "1.25" and written[1]["d_loss"] == "nan"


def test_a_run_logs_every_metrics_line_and_a_resume_drops_the_discarded_rows(with_plugin, tmp_path):
    config = TrainConfig(
        arch="mlp",
        loss="least-squares",
        dataset="swissroll",
        arch_options={"g_widths": "16", "d_widths": "16"},
        data_options={"size": 256},
        steps=4,
        batch_size=16,
        log_every=1,
        sample_every=0,
        checkpoint_every=2,
        device="cpu",
        loggers=["csv"],
    )
    run_dir = tmp_path / "run"
    train(config, run_dir, quiet=True, stream=io.StringIO())
    written = rows(run_dir / "metrics.csv")
    assert [int(row["step"]) for row in written] == [1, 2, 3, 4]
    assert [float(row["g_loss"]) for row in written] == pytest.approx([m["g_loss"] for m in metrics(run_dir)])

    train(
        config,
        run_dir,
        resume_from=run_dir / "checkpoints" / "step_000002.pt",
        discard_newer=True,
        quiet=True,
        stream=io.StringIO(),
    )
    written = rows(run_dir / "metrics.csv")
    assert [int(row["step"]) for row in written] == [1, 2, 3, 4]
    assert [float(row["d_loss"]) for row in written] == pytest.approx([m["d_loss"] for m in metrics(run_dir)])


def test_a_filename_with_a_folder_is_refused(tmp_path):
    with pytest.raises(GanplugError, match="plain file name"):
        csv_logger(tmp_path, filename="../elsewhere.csv")
