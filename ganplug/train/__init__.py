"""Training: ``train(config, run_dir)`` starts or resumes a run; the pieces live in submodules.

- :mod:`~ganplug.train.config`: :class:`TrainConfig` and its resolver (torch-free)
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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ganplug.errors import UsageError
from ganplug.files import atomic_write_bytes
from ganplug.train.config import KNOBS, ResolvedConfig, TrainConfig, check_resume, resolve, resolve_resume
from ganplug.train.rundir import CONFIG_FILE, check_new_run_dir, clear_run, is_unstarted, make_run_dir

if TYPE_CHECKING:
    from ganplug.train.checkpoint import LoadedCheckpoint
    from ganplug.train.loop import Callback, Hook


def config_toml(config: ResolvedConfig, provenance: dict[str, dict[str, Any]] | None = None) -> str:
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


def write_config(config: ResolvedConfig, run_dir: Path, provenance: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write ``RUN_DIR/config.toml`` atomically; returns its path."""
    path = Path(run_dir) / CONFIG_FILE
    atomic_write_bytes(path, config_toml(config, provenance).encode("utf-8"))
    return path


def train(
    config: TrainConfig | ResolvedConfig,
    run_dir: Path,
    *,
    resume_from: Path | LoadedCheckpoint | None = None,
    discard_newer: bool = False,
    quiet: bool = False,
    stream: TextIO | None = None,
    hooks: Sequence[Hook] = (),
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train ``config`` into ``run_dir`` and return ``run_dir``.

    ``config``: a :class:`TrainConfig`, resolved here (:func:`~ganplug.train.config.resolve`: what
    it leaves unset comes from the dataset's and the base defaults and the loss's recipe, as on
    the command line), or a :class:`~ganplug.train.config.ResolvedConfig`, taken as it is.
    New run (``resume_from`` None): ``run_dir`` must be absent or empty; it gets config.toml
    (the resolved config), metrics.jsonl, samples/ and checkpoints/.
    Resume: ``resume_from`` is a checkpoint file, a run directory, or a
    :class:`~ganplug.train.checkpoint.LoadedCheckpoint` already read; ``config`` is the stored
    config with allowed changes (a TrainConfig's set values are the changes asked for; see
    :func:`ganplug.train.checkpoint.resume_config`), anything else raises UsageError; the run
    continues in ``run_dir`` (normally the checkpoint's run).
    ``stream`` receives progress (default stderr); ``callbacks``
    (:class:`~ganplug.train.loop.Callback`) see :class:`~ganplug.train.loop.Trainer`; ``hooks``
    (deprecated: DeprecationWarning) are functions ``hook(trainer, step)`` called as a callback's
    ``on_step_start``.
    Ctrl-C saves the last completed step and re-raises KeyboardInterrupt (SIGTERM: Terminated).
    Launched by torchrun with several processes, it trains data-parallel (see
    :mod:`ganplug.train.distributed`); rank 0 alone writes files.
    """
    from ganplug.train import distributed
    from ganplug.train.loop import deprecated_hooks
    from ganplug.train.threads import torch_threads

    callbacks = [*deprecated_hooks(hooks), *callbacks]
    if resume_from is None and isinstance(config, TrainConfig):
        config = resolve(config)  # the one resolve of a run started from Python
    world = distributed.setup(config.device)
    try:
        if world is not None and not world.is_main:
            quiet, stream = True, io.StringIO()
        with torch_threads(config.threads):  # torch's CPU threads for the run, restored after
            done = _train(config, Path(run_dir), resume_from, discard_newer, quiet, stream, callbacks, world)
        distributed.barrier(world)  # no rank leaves the group while another still talks to it
        return done
    finally:
        distributed.teardown(world)


def _train(config, run_dir, resume_from, discard_newer, quiet, stream, callbacks, world) -> Path:
    from ganplug.train import checkpoint, distributed
    from ganplug.train.build import build_run
    from ganplug.train.loop import Trainer
    from ganplug.train.progress import Progress
    from ganplug.train.rundir import locked, new_run_id, read_run_id, write_run_id
    from ganplug.train.threads import threads_note

    say = Progress(0, quiet=True, stream=stream).message  # a line on the progress stream, even when quiet
    with contextlib.ExitStack() as hold:  # the run directory's lock, while this process writes there
        if world is not None and str(config.device).startswith("cuda:"):
            raise UsageError(
                f"--device {config.device} names one GPU but {world.world_size} processes run: pass --device cuda "
                "(each process uses cuda:LOCAL_RANK)"
            )
        main = world is None or world.is_main
        if resume_from is None:
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
            trainer = Trainer(run, run_dir, quiet=quiet, stream=stream, callbacks=callbacks, world=world)
            trainer_message = (
                f"training {run.config.arch} with {run.config.loss} on {run.config.dataset} "
                f"(samples of shape {tuple(run.data_shape)}) for {run.config.steps} steps on {run.device}{threads_note(run.device)}; "
                f"writing to {run_dir}"
            )
        else:
            if main:
                make_run_dir(run_dir)
                hold.enter_context(locked(run_dir))
            loaded = resume_from
            if not isinstance(loaded, checkpoint.LoadedCheckpoint):
                loaded = checkpoint.LoadedCheckpoint.read(resume_from)
            checkpoint.check_belongs(loaded)
            state = loaded.state
            stored = checkpoint.stored_config(state)
            if isinstance(config, ResolvedConfig):  # resolved against this run (ganplug train --resume, resume_config)
                check_resume(stored, {name: getattr(config, name) for name in KNOBS})
            else:  # its set values are the changes asked for
                changes = {name: value for name in KNOBS if (value := getattr(config, name)) is not None}
                config = resolve_resume(stored, changes, state.get("provenance"))
            distributed.check_batch(world, config.batch_size, config.pack)
            newer = checkpoint.newer_checkpoints(loaded.path.parent, loaded)
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
            resume_path = loaded.path
            if main:
                if recorded_id is None:
                    write_run_id(run_dir, run_id)
                if newer:
                    resume_path = checkpoint.discard_newer_work(run_dir, loaded)
                else:
                    resume_path = checkpoint.repair_latest(loaded.path.parent, loaded)
            distributed.barrier(world)
            trainer = Trainer(run, run_dir, quiet=quiet, stream=stream, callbacks=callbacks, world=world)
            trainer.load_state_dict(state, resume_path)
            further = f"pass --steps N with N > {trainer.step} to train further"
            if trainer.step > run.config.steps:
                raise UsageError(
                    f"{run_dir} is already at step {trainer.step}, past --steps {run.config.steps}: {further}"
                )
            if trainer.step == run.config.steps:  # resumed again after it ended (or was killed as it ended)
                say(f"{run_dir} is done: step {trainer.step} of {run.config.steps}; {further}")
                return run_dir
            dropped = trainer.metrics.trim(trainer.step)  # lines past the step, and unreadable ones
            if dropped:
                say(f"warning: dropped {dropped} unreadable line{'s' if dropped > 1 else ''} of {trainer.metrics.path}")
            if main:
                write_config(run.config, run_dir, run.provenance)
            trainer_message = f"resuming {run_dir} at step {trainer.step} of {run.config.steps} on {run.device}{threads_note(run.device)}"
        trainer.run_id = run_id
        if world is not None:
            per_rank = run.config.batch_size // world.world_size
            trainer_message += f" in {world.world_size} processes ({world.backend}, {per_rank} samples each per batch)"
        say(trainer_message)
        trainer.fit()
        return run_dir


__all__ = [
    "ResolvedConfig",
    "TrainConfig",
    "check_new_run_dir",
    "clear_run",
    "config_toml",
    "is_unstarted",
    "make_run_dir",
    "train",
    "write_config",
]
