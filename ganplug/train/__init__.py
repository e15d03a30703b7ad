"""Training: ``train(config, run_dir)`` starts or resumes a run; the pieces live in submodules.

- :mod:`~ganplug.train.config`: :class:`TrainConfig` (torch-free)
- :mod:`~ganplug.train.build`: config -> :class:`Run` (specs, data, loss, models, device)
- :mod:`~ganplug.train.data_order`: the exactly resumable batch order
- :mod:`~ganplug.train.loop`: the loop, driving the others through callbacks
- :mod:`~ganplug.train.step`: the step maths (critic and generator updates, EMA, learning rates)
- :mod:`~ganplug.train.guard`: rollback, the non-finite policy, deferred signals
- :mod:`~ganplug.train.outputs`: metrics.jsonl, evaluations, sample pictures, checkpoints
- :mod:`~ganplug.train.checkpoint`: saving, loading, locating checkpoints; resume rules
- :mod:`~ganplug.train.render`: PNG pictures of samples; ``.npy``/``.pt`` writers
- :mod:`~ganplug.train.loggers`: ``--logger``: the built-in TensorBoard logger and plugins' loggers
- :mod:`~ganplug.train.progress`: the progress bar (tqdm) or log lines on stderr
- :mod:`~ganplug.train.distributed`: data-parallel runs under torchrun (``--nproc``)

Importing this package does not import torch; :func:`train` does.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO

from ganplug.errors import UsageError
from ganplug.train.config import TrainConfig

if TYPE_CHECKING:
    from ganplug.train.checkpoint import LoadedCheckpoint
    from ganplug.train.loop import Hook
    from ganplug.train.outputs import Callback

CONFIG_FILE = "config.toml"


def config_toml(config: TrainConfig, provenance: dict[str, dict[str, Any]] | None = None) -> str:
    """``config`` as TOML: ``None`` values left out, option dicts as tables; ``provenance``
    (:meth:`ganplug.registry.Registry.provenance` per kind) as comments at the top."""
    from ganplug.train.toml_writer import dumps

    data: dict[str, Any] = {k: v for k, v in config.to_dict().items() if v is not None}
    for key in ("arch_options", "loss_options", "data_options"):
        data[key] = {k: v for k, v in data.get(key, {}).items() if v is not None}
    header = "".join(
        f"# {kind} {p['name']!r}: plugin {p['plugin']!r}"
        + (f" ({p['distribution']} {p['version']})" if p.get("distribution") else "")
        + "\n"
        for kind, p in (provenance or {}).items()
    )
    return header + dumps(data)


def write_config(config: TrainConfig, run_dir: Path, provenance: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write ``RUN_DIR/config.toml`` atomically; returns its path."""
    from ganplug.files import atomic_write_bytes

    path = Path(run_dir) / CONFIG_FILE
    atomic_write_bytes(path, config_toml(config, provenance).encode("utf-8"))
    return path


def is_unstarted(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run stopped before it wrote anything but its config (Ctrl-C
    during start-up): config.toml, and no checkpoint, metrics line or sample picture."""
    from ganplug.train.checkpoint import CHECKPOINTS
    from ganplug.train.outputs import METRICS, SAMPLES

    from ganplug.train.rundir import BOOKKEEPING

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        return False
    for entry in run_dir.iterdir():
        if entry.name == CONFIG_FILE or entry.name in BOOKKEEPING:
            continue
        if entry.name in (CHECKPOINTS, SAMPLES) and entry.is_dir() and not any(entry.iterdir()):
            continue
        if entry.name == METRICS and entry.is_file() and entry.stat().st_size == 0:
            continue
        return False
    return True


def check_new_run_dir(run_dir: Path, flag: str = "--out") -> None:
    """UsageError unless ``run_dir`` can take a new run: absent, empty, or a run that never
    started (see :func:`is_unstarted`; its config.toml is replaced). ``flag`` is the option that
    named it, for the message."""
    from ganplug.train.rundir import BOOKKEEPING

    run_dir = Path(run_dir)
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{flag} {run_dir}: {parent} is a file, not a directory: choose another {flag}")
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is a file, not a run directory: choose another {flag}")
    if is_unstarted(run_dir):
        return
    if (run_dir / CONFIG_FILE).exists() or (run_dir / "checkpoints").exists():
        raise UsageError(
            f"{run_dir} already holds a run: pass --resume {run_dir} to continue it or choose another {flag}"
        )
    if any(entry.name not in BOOKKEEPING for entry in run_dir.iterdir()):
        raise UsageError(f"{run_dir} is not empty: choose another {flag} (an empty or new directory)")


def clear_run(run_dir: Path) -> None:
    """Delete what a run without a checkpoint logged (metrics.jsonl, sample pictures, the temp
    file of a first checkpoint that was never finished), to train
    it again from step 0 (:func:`is_unstarted` then holds; its config.toml is rewritten when it
    starts); other files are left alone. Idempotent, so every rank of a run may call it."""
    from ganplug.train.checkpoint import CHECKPOINTS, has_checkpoint, remove_orphaned_temps
    from ganplug.train.outputs import METRICS, SAMPLES

    run_dir = Path(run_dir)
    assert not has_checkpoint(run_dir), run_dir
    remove_orphaned_temps(run_dir / CHECKPOINTS)  # a first checkpoint killed mid-write
    (run_dir / METRICS).unlink(missing_ok=True)
    for picture in (run_dir / SAMPLES).glob("*.png"):
        picture.unlink(missing_ok=True)


def make_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents); UsageError naming the reason when that fails."""
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the run directory {run_dir}: {error.strerror or error}: choose another --out") from None


def train(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume_from: "Path | LoadedCheckpoint | None" = None,
    discard_newer: bool = False,
    quiet: bool = False,
    stream: TextIO | None = None,
    hooks: Sequence["Hook"] = (),
    callbacks: Sequence["Callback"] = (),
) -> Path:
    """Train ``config`` into ``run_dir`` and return ``run_dir``.

    New run (``resume_from`` None): ``run_dir`` must be absent or empty; it gets config.toml
    (the resolved config), metrics.jsonl, samples/ and checkpoints/.
    Resume: ``resume_from`` is a checkpoint file, a run directory, or a
    :class:`~ganplug.train.checkpoint.LoadedCheckpoint` already read; ``config`` is the stored
    config with allowed changes (see :func:`ganplug.train.checkpoint.resume_config`), anything
    else raises UsageError; the run continues in ``run_dir`` (normally the checkpoint's run).
    ``stream`` receives progress (default stderr); ``hooks`` and ``callbacks``
    (:class:`~ganplug.train.outputs.Callback`) see :class:`~ganplug.train.loop.Trainer`.
    Ctrl-C saves the last completed step and re-raises KeyboardInterrupt (SIGTERM: Terminated).
    Launched by torchrun with several processes, it trains data-parallel (see
    :mod:`ganplug.train.distributed`); rank 0 alone writes files.
    """
    from ganplug.train import distributed
    from ganplug.train.threads import torch_threads

    world = distributed.setup(config.device)
    try:
        if world is not None and not world.is_main:
            quiet, stream = True, io.StringIO()
        with torch_threads(config.threads):  # torch's CPU threads for the run, restored after
            done = _train(config, Path(run_dir), resume_from, discard_newer, quiet, stream, hooks, callbacks, world)
        distributed.barrier(world)  # no rank leaves the group while another still talks to it
        return done
    finally:
        distributed.teardown(world)


def _train(config, run_dir, resume_from, discard_newer, quiet, stream, hooks, callbacks, world) -> Path:
    with contextlib.ExitStack() as hold:  # the run directory's lock, while this process writes there
        return _train_locked(hold, config, run_dir, resume_from, discard_newer, quiet, stream, hooks, callbacks, world)


def _train_locked(hold, config, run_dir, resume_from, discard_newer, quiet, stream, hooks, callbacks, world) -> Path:
    from ganplug.train import distributed
    from ganplug.train.build import build_run
    from ganplug.train.config import resolve
    from ganplug.train.checkpoint import (
        LoadedCheckpoint, check_belongs, discard_newer_work, newer_checkpoints, repair_latest, resumed_config,
        stored_config,
    )
    from ganplug.train.loop import Trainer
    from ganplug.train.progress import Progress
    from ganplug.train.rundir import locked, new_run_id, read_run_id, write_run_id
    from ganplug.train.threads import threads_note

    if world is not None and str(config.device).startswith("cuda:"):
        raise UsageError(
            f"--device {config.device} names one GPU but {world.world_size} processes run: pass --device cuda "
            "(each process uses cuda:LOCAL_RANK)"
        )
    main = world is None or world.is_main
    if resume_from is None:
        config = resolve(config)  # the dataset's and the base defaults, as the command line gets them
        distributed.check_batch(world, config.batch_size, config.pack)
        check_new_run_dir(run_dir)
        distributed.barrier(world)  # every rank checked before rank 0 writes
        run = build_run(config)
        distributed.broadcast_parameters(world, (run.generator, run.discriminator))
        run_id = new_run_id()
        if main:
            make_run_dir(run_dir)
            hold.enter_context(locked(run_dir))
            check_new_run_dir(run_dir)  # again under the lock: another run may have started here meanwhile
            write_run_id(run_dir, run_id)
            write_config(run.config, run_dir, run.provenance)
        trainer = Trainer(run, run_dir, quiet=quiet, stream=stream, hooks=hooks, callbacks=callbacks, world=world)
        trainer_message = (
            f"training {run.config.arch} with {run.config.loss} on {run.config.dataset} "
            f"(samples of shape {tuple(run.data_shape)}) for {run.config.steps} steps on {run.device}{threads_note(run.device)}; "
            f"writing to {run_dir}"
        )
    else:
        if main:
            make_run_dir(run_dir)
            hold.enter_context(locked(run_dir))
        loaded = resume_from if isinstance(resume_from, LoadedCheckpoint) else LoadedCheckpoint.read(resume_from)
        check_belongs(loaded)
        state = loaded.state
        config = resumed_config(stored_config(state), config, state.get("provenance"))
        distributed.check_batch(world, config.batch_size, config.pack)
        newer = newer_checkpoints(loaded.path.parent, loaded)
        if newer and not discard_newer:
            raise UsageError(
                f"{run_dir} has newer work than {loaded.path.name} (step {loaded.step}): checkpoints of steps "
                f"{', '.join(map(str, newer))}; resuming here would delete it. Branch into a new directory with "
                f"--fork DIR, or pass --discard-newer to rewind {run_dir} to step {loaded.step}"
            )
        run = build_run(config, provenance=state.get("provenance"))
        if list(run.data_shape) != list(state["model"]["data_shape"]):
            raise UsageError(
                f"the dataset now gives samples of shape {tuple(run.data_shape)}, the checkpoint was trained on "
                f"{tuple(state['model']['data_shape'])}: start a new run with --out"
            )
        recorded_id = read_run_id(run_dir)  # None for a run from before runs had ids
        run_id = recorded_id or loaded.run_id or new_run_id()
        checkpoint = loaded.path
        if main:
            if recorded_id is None:
                write_run_id(run_dir, run_id)
            if newer:
                checkpoint = discard_newer_work(run_dir, loaded)
            else:
                checkpoint = repair_latest(loaded.path.parent, loaded)
        distributed.barrier(world)
        trainer = Trainer(run, run_dir, quiet=quiet, stream=stream, hooks=hooks, callbacks=callbacks, world=world)
        trainer.load_state_dict(state, checkpoint)
        further = f"pass --steps N with N > {trainer.step} to train further"
        if trainer.step > run.config.steps:
            raise UsageError(f"{run_dir} is already at step {trainer.step}, past --steps {run.config.steps}: {further}")
        if trainer.step == run.config.steps:  # resumed again after it ended (or was killed as it ended)
            Progress(0, quiet=True, stream=stream).message(f"{run_dir} is done: step {trainer.step} of {run.config.steps}; {further}")
            return run_dir
        trainer.trim_metrics()
        if main:
            write_config(run.config, run_dir, run.provenance)
        trainer_message = f"resuming {run_dir} at step {trainer.step} of {run.config.steps} on {run.device}{threads_note(run.device)}"
    trainer.run_id = run_id
    if world is not None:
        per_rank = run.config.batch_size // world.world_size
        trainer_message += f" in {world.world_size} processes ({world.backend}, {per_rank} samples each per batch)"
    Progress(0, quiet=True, stream=stream).message(trainer_message)
    trainer.fit()
    return run_dir


__all__ = ["TrainConfig", "check_new_run_dir", "clear_run", "config_toml", "is_unstarted", "make_run_dir", "train", "write_config"]
