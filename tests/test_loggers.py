"""Loggers (``--logger NAME``, the ``ganplug_loggers`` hook): the built-in TensorBoard logger read
back with TensorBoard's own reader, a plugin logger's calls and failures, the missing-package
hint; and the progress output: a tqdm bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import math
import sys

import pytest
import torch
from conftest import quiet_train, read_metrics, run_main, tiny_config

from ganplug import registry as registry_module
from ganplug.plugin import LoggerSpec, Option, hookimpl
from ganplug.registry import Registry
from ganplug.train import TrainConfig, train
from ganplug.train.progress import Progress

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "--arch",
    "mlp",
    "--arch-opt",
    "g_widths=16,16",
    "--arch-opt",
    "d_widths=16,16",
    "--loss",
    "bce",
    "--dataset",
    "ring8",
    "--data-opt",
    "size=256",
    "--batch-size",
    "16",
    "--log-every",
    "1",
    "-q",
]


def events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def assert_matches_metrics(accumulator, lines) -> None:
    for key in ("d_loss", "g_loss", "samples_per_s"):
        logged = scalars(accumulator, key)
        assert [step for step, _ in logged] == [line["step"] for line in lines], key
        assert [value for _, value in logged] == pytest.approx([line[key] for line in lines], rel=1e-6), key


# -- the built-in tensorboard logger -----------------------------------------------------------------


def test_tensorboard_logs_every_metrics_value_the_evaluation_and_the_pictures(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    code, _, err = run_main(
        capsys,
        "train",
        *TINY,
        "--steps",
        "4",
        "--sample-every",
        "2",
        "--eval-every",
        "4",
        "--logger",
        "tensorboard",
        "--out",
        str(run_dir),
    )
    assert code == 0, err
    lines = read_metrics(run_dir)
    steps = [line for line in lines if "eval" not in line]
    (evaluation,) = [line for line in lines if "eval" in line]
    accumulator = events(run_dir / "tensorboard")
    assert_matches_metrics(accumulator, steps)
    assert set(accumulator.Tags()["scalars"]) >= {k for k in steps[0] if k != "step"}
    for key, value in evaluation["eval"]["modes"].items():  # null in JSON is NaN in TensorBoard
        ((step, logged),) = scalars(accumulator, f"eval/modes/{key}")
        assert step == 4 and (math.isnan(logged) if value is None else logged == pytest.approx(value, rel=1e-6)), key
    pictures = accumulator.Images("samples")
    assert [p.step for p in pictures] == [2, 4] and all(p.width > 0 and p.height > 0 for p in pictures)


def test_a_resume_from_an_older_step_leaves_no_duplicate_points(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    code, _, err = run_main(
        capsys,
        "train",
        *TINY,
        "--steps",
        "4",
        "--checkpoint-every",
        "2",
        "--logger",
        "tensorboard",
        "--out",
        str(run_dir),
    )
    assert code == 0, err
    code, _, err = run_main(
        capsys,
        "train",
        "--resume",
        str(run_dir / "checkpoints" / "step_000002.pt"),
        "--discard-newer",
        "-q",
    )
    assert code == 0, err
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # appended, not replaced
    assert_matches_metrics(events(run_dir / "tensorboard"), read_metrics(run_dir))  # steps 1, 2, 3, 4 once each


def test_without_the_tensorboard_package_the_logger_is_a_one_line_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `from torch.utils.tensorboard import` fails
    code, _, err = run_main(
        capsys, "train", *TINY, "--steps", "2", "--logger", "tensorboard", "--out", str(tmp_path / "r")
    )
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("Error: --logger tensorboard needs the tensorboard package") and line.endswith(
        "pip install 'ganplug[tensorboard]'"
    ), line


def test_an_unknown_logger_is_refused_with_a_suggestion_before_training(tmp_path, capsys):
    code, _, err = run_main(
        capsys, "train", *TINY, "--steps", "2", "--logger", "tensorbord", "--out", str(tmp_path / "r")
    )
    assert code == 2 and "unknown logger 'tensorbord'. Did you mean 'tensorboard'?" in err, err
    assert not (tmp_path / "r").exists()
    code, out, _ = run_main(capsys, "list", "loggers")
    assert code == 0 and out.startswith("tensorboard\n") and "flush_secs: int = 30" in out


# -- plugin loggers ---------------------------------------------------------------------------------------


class Recorder:
    """A logger that records its calls and draws from the global RNG in each (which must not
    change the run)."""

    calls: list[tuple] = []

    def __init__(self, run_dir, tag: str = "", fail_in: str = "") -> None:
        self.run_dir, self.tag, self.fail_in = run_dir, tag, fail_in

    def _record(self, *call) -> None:
        torch.randn(3)
        Recorder.calls.append(call)
        if call[0] == self.fail_in:
            raise RuntimeError(f"{call[0]} broke")

    def start(self, config):
        self._record("start", config["start_step"], config["steps"], self.tag)

    def log(self, step, values):
        self._record("log", step, values)

    def images(self, step, path):
        self._record("images", step, path)

    def evaluation(self, step, results):
        self._record("evaluation", step, results)

    def close(self):
        self._record("close")


@pytest.fixture
def recorder_registry(monkeypatch):
    """The process registry with plugin ``recpkg`` adding logger ``recorder`` (options tag, fail_in)."""

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_loggers():
            options = (Option("tag", str, ""), Option("fail_in", str, ""))
            return [LoggerSpec("recorder", "records its calls", Recorder, options=options)]

    Recorder.calls = []
    reg = Registry(entry_points=[], extra_plugins=[("recpkg", Plugin())], report=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    return reg


def nulled(values: dict) -> dict:
    return {key: None if isinstance(v, float) and math.isnan(v) else v for key, v in values.items()}


def as_json(call: tuple) -> tuple:
    """A recorded call with NaN as null, the way metrics.jsonl has it."""
    if call[0] == "log":
        return (*call[:2], nulled(call[2]))
    if call[0] == "evaluation":
        return (*call[:2], {metric: nulled(values) for metric, values in call[2].items()})
    return call


def tiny(steps: int, **knobs) -> TrainConfig:
    """conftest's tiny run, with a metrics line and a picture every 2 steps."""
    return tiny_config(steps, **{"log_every": 2, "sample_every": 2, **knobs})


def test_a_logger_gets_each_line_evaluation_and_picture_in_order_and_leaves_the_weights_alone(
    tmp_path, recorder_registry
):
    quiet_train(tiny(4, eval_every=4, loggers=["recorder"]), tmp_path / "logged")
    lines = read_metrics(tmp_path / "logged")
    by_step = {line["step"]: {k: v for k, v in line.items() if k != "step"} for line in lines if "eval" not in line}
    (evaluation,) = [line["eval"] for line in lines if "eval" in line]
    samples = tmp_path / "logged" / "samples"
    assert [as_json(call) for call in Recorder.calls] == [
        ("start", 0, 4, ""),
        ("log", 2, by_step[2]),
        ("images", 2, samples / "step_000002.png"),
        ("log", 4, by_step[4]),
        ("evaluation", 4, evaluation),
        ("images", 4, samples / "step_000004.png"),
        ("close",),
    ]
    quiet_train(tiny(4, eval_every=4), tmp_path / "plain")
    logged = torch.load(tmp_path / "logged" / "checkpoints" / "latest.pt", weights_only=True)
    plain = torch.load(tmp_path / "plain" / "checkpoints" / "latest.pt", weights_only=True)
    for key, value in plain["generator"].items():
        assert torch.equal(logged["generator"][key], value), key


def test_a_resumed_run_starts_its_loggers_at_the_step_and_reads_options_from_a_config(
    tmp_path, capsys, recorder_registry
):
    config = tmp_path / "run.toml"
    config.write_text('loggers = ["recorder"]\n\n[logger_options.recorder]\ntag = "mine"\n')
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "train", *TINY, "--steps", "2", "--config", str(config), "--out", str(run_dir))
    assert code == 0, err
    Recorder.calls = []
    code, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "3", "-q")
    assert code == 0, err
    assert Recorder.calls[0] == ("start", 2, 3, "mine") and [c[:2] for c in Recorder.calls[1:]] == [
        ("log", 3),
        ("images", 3),
        ("close",),
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text('[logger_options.recorder]\ntag = "x"\n')
    code, _, err = run_main(capsys, "train", *TINY, "--steps", "2", "--config", str(bad), "--out", str(tmp_path / "b"))
    assert code == 2 and "logger_options names 'recorder', which is no logger of this run: add --logger recorder" in err


@pytest.mark.parametrize("fail_in", ["start", "log", "images", "close"])
def test_a_logger_that_raises_is_reported_once_and_the_run_finishes(tmp_path, capsys, recorder_registry, fail_in):
    run_dir = tmp_path / "run"
    code, _, err = run_main(
        capsys,
        "train",
        *TINY,
        "--steps",
        "4",
        "--sample-every",
        "2",
        "--logger",
        "recorder",
        "--out",
        str(run_dir),
        "--config",
        str(_options(tmp_path, fail_in)),
    )
    assert code == 0, err
    reports = [line for line in err.splitlines() if "recorder" in line]
    assert len(reports) == 1, err
    assert f"logger 'recorder' of plugin 'recpkg' failed in {fail_in}(): RuntimeError: {fail_in} broke; " in reports[0]
    assert "logger recorder is off for the rest of this run" in reports[0]
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["step"] == 4
    assert [line["step"] for line in read_metrics(run_dir)] == [1, 2, 3, 4]
    failed_at = next(i for i, call in enumerate(Recorder.calls) if call[0] == fail_in)
    assert Recorder.calls[failed_at + 1 :] == ([] if fail_in == "close" else [("close",)])  # then closed, once


def _options(tmp_path, fail_in: str):
    path = tmp_path / "options.toml"
    path.write_text(f'[logger_options.recorder]\nfail_in = "{fail_in}"\n')
    return path


def test_a_logger_factory_that_raises_is_reported_and_left_out(tmp_path, capsys, monkeypatch):
    def broken(run_dir):
        raise KeyError("oops")

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_loggers():
            return [LoggerSpec("broken", "fails to build", broken)]

    monkeypatch.setattr(
        registry_module, "_REGISTRY", Registry(entry_points=[], extra_plugins=[("brokenpkg", Plugin())], report=False)
    )
    code, _, err = run_main(capsys, "train", *TINY, "--steps", "2", "--logger", "broken", "--out", str(tmp_path / "r"))
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if "broken" in line]
    assert line.startswith("warning: logger 'broken' of plugin 'brokenpkg' failed: KeyError: 'oops'") and line.endswith(
        "logger broken is off for this run"
    )


# -- progress ---------------------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_tqdm_bar_on_a_terminal_and_plain_lines_otherwise():
    record = {"step": 10, "d_loss": 0.5, "g_loss": 1.25, "samples_per_s": 1000.0, "elapsed_s": 1.0}
    tty = FakeTTY()
    bar = Progress(100, stream=tty, min_interval=0.0)
    bar.update(5)
    bar.log(record)
    bar.message("a note")
    bar.close()
    text = tty.getvalue()
    last = text.rsplit("\r", 1)[-1]
    assert last.startswith("step 10/100 |") and "10%" in last and "steps/s" in last and "ETA " in last, text
    assert "d_loss 0.5  g_loss 1.25" in last and "samples_per_s" not in text
    assert "\ra note\n" in text and text.endswith("\n")  # the bar cleared for the note, its last state kept

    for stream, quiet in ((io.StringIO(), False), (FakeTTY(), True)):
        plain = Progress(100, stream=stream, quiet=quiet)
        plain.update(5)
        plain.log(record)
        assert stream.getvalue() == "step 10/100  d_loss 0.5  g_loss 1.25  samples_per_s 1000  ETA 0:00:00\n"


def test_a_run_on_a_terminal_shows_the_bar_and_its_messages_on_their_own_lines(tmp_path):
    tty = FakeTTY()
    train(tiny(3, log_every=1, sample_every=0), tmp_path / "run", stream=tty)
    text = tty.getvalue()
    assert "\rstep 3/3 |" in text and "100%" in text
    assert text.splitlines()[0].startswith("training mlp with bce on ring8")
    assert text.splitlines()[-1].startswith("done: step 3 in ")
    assert "samples_per_s" not in text
