"""Evaluation during training (``--eval-every``): metric lines in metrics.jsonl, the same weights
with or without it (also across a resume), the error for a dataset without metrics, the CLI flag."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import quiet_train, read_metrics

from ganplug.cli import build_config, main
from ganplug.errors import GanplugError, UsageError
from ganplug.metrics import metric_context, prepare_metrics, score_generator
from ganplug.train import TrainConfig, train
from ganplug.train.checkpoint import find_checkpoint, load_checkpoint, resume_config, stored_config

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(
    arch="mlp",
    loss="wasserstein",
    dataset="ring8",
    arch_options={"g_widths": "16,16", "d_widths": "16,16"},
    loss_options={"lipschitz": "gp"},
    data_options={"size": 200},
    n_critic=2,
    ema=0.9,
    batch_size=16,
    log_every=1,
    sample_every=0,
    checkpoint_every=0,
    num_samples=4,
    device="cpu",
    seed=5,
)


def test_eval_every_logs_metric_lines_and_a_summary(tmp_path):
    config = TrainConfig(**{**TINY, "ema": 0.0}, steps=4, eval_every=2)
    stream = io.StringIO()
    train(config, tmp_path / "run", stream=stream)
    records = read_metrics(tmp_path / "run")
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert [r["step"] for r in records if "eval" not in r] == [1, 2, 3, 4]
    log_elapsed = {r["step"]: r["elapsed_s"] for r in records if "eval" not in r}
    for record in evals:
        assert set(record) == {"step", "elapsed_s", "eval"}
        # the run's seconds when the step was done: at least the log line of that step, before the next one
        assert log_elapsed[record["step"]] <= record["elapsed_s"]
        assert record["step"] == 4 or record["elapsed_s"] <= log_elapsed[record["step"] + 1]
        assert set(record["eval"]["modes"]) == {"modes_captured", "modes_total", "high_quality_pct", "reverse_kl"}
        assert record["eval"]["modes"]["modes_total"] == 8
    printed = [line for line in stream.getvalue().splitlines() if line.startswith("eval step")]
    assert [line.split(":")[0] for line in printed] == ["eval step 2", "eval step 4"]
    assert all("modes: modes_captured" in line for line in printed)
    # the line equals `ganplug eval`'s scoring of the final generator (same code path, seed, noise)
    from ganplug.generate import load_generator

    generator = load_generator(tmp_path / "run", ema=True)
    expected = score_generator(
        generator,
        prepare_metrics("ring8")[0],
        latent_dim=generator.latent_dim,
        latent=generator.latent,
        context=metric_context("ring8", stored_config(load_checkpoint(find_checkpoint(tmp_path / "run"))).data_options),
        seed=5,
    )
    assert evals[-1]["eval"] == {k: {m: (v if v == v else None) for m, v in d.items()} for k, d in expected.items()}


def test_quiet_runs_print_their_eval_lines_too(tmp_path):
    """-q drops the progress bar, not the results: the evaluation lines are printed."""
    out = quiet_train(TrainConfig(**TINY, steps=3, eval_every=2), tmp_path / "run")
    printed = [line for line in out.splitlines() if line.startswith("eval step")]
    assert len(printed) == 1 and printed[0].startswith("eval step 2: modes: modes_captured ")
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "eval" in r] == [2]  # not at the end unless due


def test_eval_does_not_change_the_run_and_resumes_exactly(tmp_path):
    quiet_train(TrainConfig(**TINY, steps=6), tmp_path / "plain")
    quiet_train(TrainConfig(**TINY, steps=3, eval_every=1), tmp_path / "eval")
    checkpoint = find_checkpoint(tmp_path / "eval")
    config = resume_config(stored_config(load_checkpoint(checkpoint)), {"steps": 6, "eval_every": 2})
    assert config.eval_every == 2  # may change on resume
    quiet_train(config, tmp_path / "eval", resume_from=checkpoint)
    a = torch.load(tmp_path / "plain" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "eval" / "checkpoints" / "latest.pt", weights_only=True)
    for key in ("generator", "discriminator", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    assert torch.equal(a["rng"]["cpu"], b["rng"]["cpu"])
    assert a["step"] == b["step"] == 6

    def losses(run):
        return [(r["step"], r["d_loss"], r["g_loss"]) for r in read_metrics(run) if "eval" not in r]

    assert losses(tmp_path / "plain") == losses(tmp_path / "eval")
    assert [r["step"] for r in read_metrics(tmp_path / "eval") if "eval" in r] == [1, 2, 3, 4, 6]


def test_a_failing_metric_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    import ganplug.metrics

    def refuse(*args, **kwargs):
        raise GanplugError("digits-quality: the samples contain NaN or infinite values")

    monkeypatch.setattr(ganplug.metrics, "score_generator", refuse)
    out = quiet_train(TrainConfig(**TINY, steps=2, eval_every=1), tmp_path / "run")
    assert out.count("warning: step ") == 2 and "evaluation failed: digits-quality" in out
    assert not [r for r in read_metrics(tmp_path / "run") if "eval" in r]
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


def test_eval_every_on_a_dataset_without_metrics_is_refused_before_writing(tmp_path, blobs_registry):
    config = TrainConfig(**{**TINY, "dataset": "blobs", "data_options": {}}, steps=2, eval_every=1)
    with pytest.raises(
        UsageError, match=r"--eval-every: no metric applies to dataset 'blobs' \(see ganplug list metrics\)"
    ):
        quiet_train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    quiet_train(TrainConfig(**{**TINY, "dataset": "blobs", "data_options": {}}, steps=1), tmp_path / "off")  # 0 = off


def test_cli_eval_every_on_a_dataset_without_metrics_is_one_line(tmp_path, capsys, blobs_registry):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--arch", "mlp", "--dataset", "blobs", "--eval-every", "5", "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert err.count("\n") == 1 and "--eval-every: no metric applies to dataset 'blobs'" in err


def test_cli_flag_is_parsed_and_validated(tmp_path, capsys):
    assert build_config({"eval_every": 5}).eval_every == 5
    assert build_config({}).eval_every == 0
    with pytest.raises(UsageError, match="eval_every must be an integer >= 0"):
        quiet_train(TrainConfig(**TINY, steps=1, eval_every=-1), tmp_path / "bad")
    with pytest.raises(SystemExit) as exited:
        main(["train", "--eval-every", "-1"])
    assert exited.value.code == 2
    capsys.readouterr()
    run = tmp_path / "cli"
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "train",
                "--arch",
                "mlp",
                "--loss",
                "bce",
                "--dataset",
                "ring8",
                "--steps",
                "2",
                "--batch-size",
                "16",
                "--arch-opt",
                "g_widths=16,16",
                "--arch-opt",
                "d_widths=16,16",
                "--data-opt",
                "size=64",
                "--device",
                "cpu",
                "--eval-every",
                "1",
                "--quiet",
                "--out",
                str(run),
            ]
        )
    assert exited.value.code in (0, None), capsys.readouterr().err
    assert [r["step"] for r in read_metrics(run) if "eval" in r] == [1, 2]
