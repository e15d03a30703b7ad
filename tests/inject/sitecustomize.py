"""Fault injection for the tests' subprocesses: with this folder on PYTHONPATH and
``GANPLUG_FAULT=POINT:N`` in the environment, a ganplug process kills itself (or sends a signal)
at the N-th call of the function that does POINT, before or after the real call. Faults land at an
exact point of the code, never at a moment chosen by a timer.

Environment:
- ``GANPLUG_FAULT``: ``POINT:N`` (see ``POINTS`` below).
- ``GANPLUG_FAULT_SIGNAL``: the signal's name, default ``SIGKILL``.
- ``GANPLUG_FAULT_TARGET``: ``self`` (default) or ``launcher`` (the grandparent: ``ganplug
  --nproc``, through torchrun's agent).
- ``GANPLUG_FAULT_RANK``: only the process with this ``RANK`` (torchrun) injects.
- ``GANPLUG_FAULT_ATTEMPT``: only this ``TORCHELASTIC_RESTART_COUNT`` injects (``0``: the first).

Points: ``before-temp`` (a checkpoint, before its temp file), ``mid-write`` (half of a checkpoint
written), ``before-rename``/``after-rename`` (a step file's rename), ``latest-temp`` (the link that
becomes latest.pt), ``after-latest`` (latest.pt replaced), ``mid-prune`` (an old step file
deleted), ``after-checkpoint`` (the whole checkpoint written), ``metrics-mid-line``/
``metrics-after-line`` (a metrics.jsonl line), ``picture-mid-write``/``picture-after`` (a sample
picture), ``in-step`` (as a training step starts: a signal stops the run at once),
``mid-step`` (inside a training step's maths: a signal lets the step finish first).
"""

import builtins
import os
import pathlib
import re
import signal


def _install(point: str, nth: int) -> None:
    import torch

    import ganplug.files
    import ganplug.train.checkpoint as checkpoint
    import ganplug.train.loop as loop
    import ganplug.train.outputs as outputs
    import ganplug.train.step as step

    calls = [0]
    signum = getattr(signal, os.environ.get("GANPLUG_FAULT_SIGNAL", "SIGKILL"))
    target = os.environ.get("GANPLUG_FAULT_TARGET", "self")

    def fire():
        pid = os.getpid()
        if target == "launcher":
            pid = int(pathlib.Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(pid, signum)

    def hit():
        calls[0] += 1
        return calls[0] == nth

    def around(owner, name, when, matches=lambda *a, **k: True):
        real = getattr(owner, name)

        def patched(*args, **kwargs):
            chosen = matches(*args, **kwargs) and hit()
            if chosen and when == "before":
                fire()
            result = real(*args, **kwargs)
            if chosen and when == "after":
                fire()
            return result

        setattr(owner, name, patched)

    def named(pattern, index):
        return lambda *args, **kwargs: re.fullmatch(pattern, pathlib.Path(str(args[index])).name) is not None

    if point == "before-temp":
        around(checkpoint, "save_checkpoint", "before")
    elif point == "mid-write":
        real_save = torch.save

        def save(obj, handle, *args, **kwargs):
            if hit():
                handle.write(b"half a checkpoint")
                handle.flush()
                fire()
            return real_save(obj, handle, *args, **kwargs)

        torch.save = save
    elif point in ("before-rename", "after-rename"):
        around(os, "replace", point.split("-")[0], named(r"step_\d+\.pt", 1))
    elif point == "latest-temp":
        around(os, "link", "after", named(r"\.latest\.pt\.tmp-\d+", 1))
    elif point == "after-latest":
        around(os, "replace", "after", named(r"latest\.pt", 1))
    elif point == "mid-prune":
        around(pathlib.Path, "unlink", "after", named(r"step_\d+\.pt", 0))
    elif point == "after-checkpoint":
        around(outputs, "write_run_checkpoint", "after")
    elif point in ("metrics-mid-line", "metrics-after-line"):
        real_open = builtins.open

        class Line:
            def __init__(self, handle):
                self.handle = handle

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.handle.close()

            def write(self, text):
                if hit():
                    self.handle.write(text[: len(text) // 2] if point == "metrics-mid-line" else text)
                    self.handle.flush()
                    fire()
                return self.handle.write(text)

        def opener(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            return Line(handle) if str(file).endswith("metrics.jsonl") and "a" in mode else handle

        builtins.open = opener
    elif point == "picture-mid-write":
        scope = outputs.save_png.__globals__  # the picture writer's module
        real_write = scope["atomic_write_bytes"]

        def write(path, data):
            if re.fullmatch(r"step_\d+\.png", pathlib.Path(path).name) and hit():
                ganplug.files.atomic_write(
                    path, lambda handle: (handle.write(data[: len(data) // 2]), handle.flush(), fire())
                )
            return real_write(path, data)

        scope["atomic_write_bytes"] = write
    elif point == "picture-after":
        around(outputs, "save_png", "after")
    elif point == "in-step":
        around(loop.Trainer, "run_step", "before")
    elif point == "mid-step":
        around(step.AdversarialStep, "run_step", "before")
    else:
        raise SystemExit(f"GANPLUG_FAULT: unknown point {point!r}")


def _wanted() -> bool:
    if "GANPLUG_FAULT" not in os.environ:
        return False
    rank, attempt = os.environ.get("GANPLUG_FAULT_RANK"), os.environ.get("GANPLUG_FAULT_ATTEMPT")
    if rank is not None and os.environ.get("RANK") != rank:
        return False
    return attempt is None or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == attempt


class _AfterGanplug:
    """Installs the fault once ganplug.cli is imported (so the patched modules are ganplug's)."""

    def find_spec(self, name, path=None, target=None):
        if name == "ganplug.cli":
            import sys

            sys.meta_path.remove(self)
            point, nth = os.environ["GANPLUG_FAULT"].rsplit(":", 1)
            _install(point, int(nth))
        return None


if _wanted():
    import sys

    sys.meta_path.insert(0, _AfterGanplug())
