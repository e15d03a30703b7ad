"""Checkpoints: atomic writing, safe loading, locating them, and the config a resume continues with.

A checkpoint is a ``torch.save``d dict of tensors and plain data only, so it loads with
``torch.load(weights_only=True)`` (no code runs while loading). Keys::

    format: "ganplug-checkpoint"   version: 1          ganplug_version: str
    config: dict (the resolved TrainConfig)           model: dict (build.Run.model_info())
    step: int (generator steps done)                  elapsed_s: float (training time so far)
    generator, discriminator: state dicts             ema: state dict or None
    optimizer_g, optimizer_d: optimiser state dicts
    rng: {"cpu": ByteTensor, "cuda": [ByteTensor, ...] or None}
    data_order: {"epoch", "position", "size", "batch_size"}
    fixed_noise: (num_samples, latent_dim) float tensor
    skipped_steps: int (optional; steps dropped by on_nan="skip")
    loss_state: the loss's ``state_dict()`` or None (optional; e.g. R1's count of critic updates)
    augment: the augmentation probability's state (``--augment``; ganplug.train.augment), or None
    provenance: {kind: {"kind", "name", "plugin", "distribution", "version"}} (optional; the plugin of the
        architecture, loss, dataset and each augmentation ("augmentation", "augmentation 2", ...))

Checkpoints do not depend on the number of processes (the data position is global, the RNG state rank 0's, which
every rank shares). ``checkpoints/latest.pt`` is a hard link to (else a copy of) the newest step file; the last
:data:`KEEP` step files are kept. What a crash (``kill -9``, an OOM kill, a lost node) leaves at each point of
:func:`write_run_checkpoint` of step N:

1. orphaned temp files of dead writers are deleted;
2. the step file is written to ``.step_N.pt.tmp-PID`` and fsynced (a crash leaves an orphan);
3. it is renamed to ``step_N.pt`` and the directory fsynced (from here step N is complete);
4. ``latest.pt`` is pointed at it through ``.latest.pt.tmp-PID`` and a rename (before it, at step N - every);
5. step files beyond the newest :data:`KEEP` are deleted, oldest first.

Step N's metrics line and sample picture may be written before its checkpoint. So a resume never trusts
``latest.pt`` alone: :func:`newest_checkpoint` takes the newest step file that loads and belongs to the run (one
line names each one skipped), the trainer points ``latest.pt`` back at it, and metrics lines past its step are
dropped and run again, bit for bit. Resuming an older checkpoint than the newest is refused unless the run is
rewound (:func:`discard_newer_work`) or branched into a new directory (:func:`fork_run`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ganplug.errors import GanplugError, UsageError
from ganplug.files import atomic_write, fsync_dir
from ganplug.train.config import ResolvedConfig, command_line_values, resolve_resume
from ganplug.train.rundir import (
    CHECKPOINTS,
    CONFIG_FILE,
    LATEST,
    METRICS,
    SAMPLES,
    check_new_run_dir,
    make_run_dir,
    new_run_id,
    read_run_id,
    remove_orphaned_temps,
    step_file_name,
    step_files,
    write_run_id,
)

FORMAT = "ganplug-checkpoint"
VERSION = 1
KEEP = 3  # step checkpoints kept besides latest.pt
REQUIRED_KEYS = tuple(
    "config model step generator discriminator optimizer_g optimizer_d rng data_order fixed_noise".split()
)


# -- writing -----------------------------------------------------------------------------------


def save_checkpoint(state: Mapping[str, Any], path: Path) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically (a crash leaves the previous file intact); ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: torch.save(dict(state), handle))
    return path


def _point_latest(directory: Path, path: Path) -> None:
    """Make ``directory/latest.pt`` the file ``path`` (a hard link, or an atomic copy where links are refused)."""
    latest = directory / LATEST
    tmp = latest.with_name(f".{LATEST}.tmp-{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, latest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)


def write_run_checkpoint(state: Mapping[str, Any], directory: Path, step: int, keep: int = KEEP) -> Path:
    """Save ``state`` as ``directory/step_NNNNNN.pt``, point ``latest.pt`` at it and delete all but the newest
    ``keep`` step files. Returns the step file's path."""
    directory = Path(directory)
    remove_orphaned_temps(directory)
    path = save_checkpoint(state, directory / step_file_name(step))
    _point_latest(directory, path)
    kept = [other for _, other in step_files(directory)]
    for old in kept[: max(0, len(kept) - keep)]:
        old.unlink(missing_ok=True)
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _unlinked_latest(directory: Path) -> Path | None:
    """``directory/latest.pt`` when it is no link to a step file there (a copy, or a checkpoint of its own)."""
    latest = Path(directory) / LATEST
    if latest.is_file() and not any(_same_file(latest, file) for _, file in step_files(directory)):
        return latest
    return None


def newer_checkpoints(directory: Path, resumed: LoadedCheckpoint) -> list[int]:
    """The steps of the complete checkpoints of ``resumed``'s run in ``directory`` newer than it (step files, and
    ``latest.pt`` when a checkpoint of its own). Files that do not load, or of another run, hold no work of it."""
    directory = Path(directory)
    files = [file for step, file in step_files(directory) if step > resumed.step]
    latest = _unlinked_latest(directory)
    if latest is not None and not _same_file(latest, resumed.path):
        files.append(latest)
    newer = set()
    for file in files:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
            step = int(state["step"])
        except Exception:  # unreadable: nothing to protect
            continue
        if step > resumed.step and belongs(state, resumed.run_id):
            newer.add(step)
    return sorted(newer)


def _later_files(directory: Path, step: int) -> list[Path]:
    """``step_NNNNNN.*`` files in ``directory`` of steps after ``step``."""
    return [path for number, path in step_files(directory, None) if number > step]


def discard_newer_work(run_dir: Path, loaded: LoadedCheckpoint) -> Path:
    """``--discard-newer``: rewind ``run_dir`` to the checkpoint ``loaded`` (its ``latest.pt``; the step files and
    sample pictures of later steps deleted, metrics lines trimmed on resume). Returns the checkpoint to resume."""
    directory = Path(run_dir) / CHECKPOINTS
    repair_latest(directory, loaded)
    for later in _later_files(directory, loaded.step) + _later_files(Path(run_dir) / SAMPLES, loaded.step):
        later.unlink(missing_ok=True)
    return loaded.path


def fork_run(loaded: LoadedCheckpoint, new_dir: Path) -> LoadedCheckpoint:
    """``--fork``: branch the run of checkpoint ``loaded`` into the new run directory ``new_dir``, a run of its own
    (a new run id) with its config, metrics lines and sample pictures up to the checkpoint's step, and the
    checkpoint as its first; the original is not touched. Returns the checkpoint in ``new_dir`` to resume from."""
    source, new_dir = run_dir_of(loaded.path), Path(new_dir)
    check_new_run_dir(new_dir, flag="--fork")
    make_run_dir(new_dir)
    run_id = new_run_id()
    write_run_id(new_dir, run_id)
    for name in (CONFIG_FILE, METRICS):  # metrics lines past the step are trimmed on resume
        if (source / name).is_file():
            shutil.copyfile(source / name, new_dir / name)
    samples = source / SAMPLES
    if samples.is_dir():
        (new_dir / SAMPLES).mkdir(exist_ok=True)
        later = set(_later_files(samples, loaded.step))
        for picture in samples.iterdir():
            if picture.is_file() and picture not in later:
                shutil.copyfile(picture, new_dir / SAMPLES / picture.name)
    state = {**loaded.state, "run_id": run_id}
    path = write_run_checkpoint(state, new_dir / CHECKPOINTS, loaded.step)
    return LoadedCheckpoint(path, state)


def check_belongs(loaded: LoadedCheckpoint) -> None:
    """UsageError when the checkpoint ``loaded`` lies in the run directory of another run (it was copied in): it is
    neither resumed there nor a reason to delete that run's work."""
    run_dir = loaded.path.parent.parent
    if loaded.path.parent.name == CHECKPOINTS and not belongs(loaded.state, run_id := read_run_id(run_dir)):
        raise UsageError(
            f"{loaded.path} is a checkpoint of another run (run id {loaded.run_id}) than {run_dir} (run id {run_id}): "
            f"it was copied in: move it out of {run_dir} and resume its own run"
        )


# -- reading -----------------------------------------------------------------------------------


def _warn(text: str) -> None:
    print(f"ganplug: warning: {text}", file=sys.stderr)


def find_checkpoint(path: Path) -> Path:
    """The checkpoint file ``path`` names: a file, or a run directory's newest (:func:`newest_checkpoint`)."""
    path = Path(path)
    return path if path.is_file() else newest_checkpoint(path).path


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read once: its file and checked contents (:func:`load_checkpoint`), which ``--resume`` checks
    before training and the trainer resumes from without loading the file again."""

    path: Path
    state: dict[str, Any]

    @classmethod
    def read(cls, target: Path, warn: Callable[[str], None] = _warn) -> LoadedCheckpoint:
        """The checkpoint ``target`` names: a file, or a run directory's newest (``warn``: a line per file skipped)."""
        target = Path(target)
        if target.is_file():
            return cls(target, load_checkpoint(target))
        return newest_checkpoint(target, warn)

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def run_id(self) -> str | None:
        return self.state.get("run_id")


def belongs(state: Mapping[str, Any], run_id: str | None) -> bool:
    """Whether a checkpoint's contents are of the run ``run_id`` (either id unknown, as in older runs: yes)."""
    return run_id is None or state.get("run_id") in (None, run_id)


def newest_checkpoint(path: Path, warn: Callable[[str], None] = _warn) -> LoadedCheckpoint:
    """The newest complete checkpoint of the run directory ``path`` (or its ``checkpoints`` folder): the newest step
    file that loads and belongs to the run, or ``latest.pt`` when it is a newer one of its own (a crash may have
    come between the two). Each file passed over gets a line through ``warn``; UsageError when none is left."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"no run directory or checkpoint at {path}")
    directory = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path  # or any folder of step files
    run_id = read_run_id(directory.parent if directory.name == CHECKPOINTS else directory)
    latest = directory / LATEST
    files = [file for _, file in reversed(step_files(directory))] + ([latest] if _unlinked_latest(directory) else [])
    found: LoadedCheckpoint | None = None
    for file in files:
        if found is not None and file != latest:
            continue  # older step files are not needed
        try:
            state = load_checkpoint(file)
        except GanplugError as error:
            warn(f"skipping {file}: {str(error).removeprefix(f'{file} ')}")
            continue
        if not belongs(state, run_id):
            warn(f"skipping {file}: it is a checkpoint of another run (run id {state.get('run_id')}, not {run_id})")
            continue
        if found is None or int(state["step"]) > found.step:
            found = LoadedCheckpoint(file, state)
    if found is not None and found.path != latest and _same_file(latest, found.path):
        found = LoadedCheckpoint(latest, found.state)  # the usual case: named as the run's latest
    if found is None:
        if files:
            raise UsageError(
                f"no complete checkpoint of this run in {directory}: every file there was skipped (see above)"
            )
        raise UsageError(f"no checkpoint in {path} (expected {path / CHECKPOINTS / LATEST}): is it a run directory?")
    return found


def repair_latest(directory: Path, loaded: LoadedCheckpoint, warn: Callable[[str], None] = _warn) -> Path:
    """Point ``directory/latest.pt`` at the checkpoint ``loaded`` a run resumes from, where it is not (a crash, a
    damaged file); one of another run is renamed beside it, never overwritten. Returns the path to resume from."""
    directory = Path(directory)
    latest = directory / LATEST
    if loaded.path == latest or _same_file(latest, loaded.path) or loaded.path.parent != directory:
        return loaded.path
    if latest.is_file():
        try:
            other = torch.load(latest, map_location="cpu", weights_only=True)
            foreign = isinstance(other, dict) and not belongs(other, loaded.run_id)
        except Exception:
            foreign = False
        if foreign:
            kept = directory / f"foreign-{str(other.get('run_id'))[:8]}-{LATEST}"
            os.replace(latest, kept)
            warn(f"{latest} is a checkpoint of another run: moved to {kept}")
    _point_latest(directory, loaded.path)
    return loaded.path


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint file belongs to: ``RUN_DIR`` of ``RUN_DIR/checkpoints/X.pt``."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name != CHECKPOINTS:
        raise UsageError(
            f"{checkpoint} is not inside a run's {CHECKPOINTS}/ folder, so there is no run directory to "
            f"continue: copy it to RUN_DIR/{CHECKPOINTS}/{LATEST} and pass --resume RUN_DIR"
        )
    return checkpoint.parent.parent


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a ganplug checkpoint (a file, or a run directory's newest: :func:`newest_checkpoint`).

    Only tensors and plain data are unpickled (``weights_only=True``). GanplugError for a missing file, no torch file
    (or a truncated one, or one with refused objects), a foreign checkpoint, a newer format version, missing entries.
    """
    path = Path(path)
    if path.is_dir():
        return newest_checkpoint(path).state
    if not path.exists():
        raise UsageError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as handle:
            first = handle.read(1)
    except OSError as error:
        raise GanplugError(f"{path} could not be read ({error.strerror or error})") from None
    reason = "not a torch file, or a truncated one"
    if first != b"\x80" and not zipfile.is_zipfile(path):  # neither torch's zip format nor a raw pickle
        raise UsageError(f"{path} is not a ganplug checkpoint ({reason})")
    try:
        with warnings.catch_warnings():  # a raw pickle of another protocol: refused below anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError (bad zip), OSError (truncated), EOFError, ...
        if isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower().replace("_", " "):
            reason = "it holds objects other than tensors and plain data; refused without running them"
        raise UsageError(f"{path} is not a ganplug checkpoint ({reason})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(
            f"{path} is a foreign checkpoint (a torch file without the {FORMAT!r} tag): "
            "ganplug resumes and samples only from checkpoints it wrote"
        )
    version = state.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise GanplugError(
            f"{path} has checkpoint format version {version!r}; this ganplug reads up to {VERSION}: upgrade ganplug"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise GanplugError(f"{path} is a damaged ganplug checkpoint (missing {', '.join(missing)})")
    return state


def stored_config(state: Mapping[str, Any]) -> ResolvedConfig:
    """The resolved config a loaded checkpoint holds (:meth:`ResolvedConfig.from_stored`)."""
    try:
        return ResolvedConfig.from_stored(dict(state["config"]))
    except (KeyError, TypeError) as error:
        raise GanplugError(f"the checkpoint's config does not fit this ganplug ({error})") from None


def resume_config(
    stored: ResolvedConfig, overrides: Mapping[str, Any], provenance: Mapping[str, Any] | None = None
) -> ResolvedConfig:
    """The config to resume with: ``stored`` (a checkpoint's) with ``overrides``, the command line's options (click's
    parameter names or field names, None ignored: :func:`~ganplug.train.config.command_line_values`), resolved by
    :func:`~ganplug.train.config.resolve_resume` against the specs recorded in ``provenance``."""
    return resolve_resume(stored, command_line_values(overrides), provenance)
