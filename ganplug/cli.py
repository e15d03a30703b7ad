"""The ``ganplug`` command line (click). Imports torch only inside the commands that need it."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ganplug import __version__
from ganplug.errors import DEBUG_VARIABLE, GanplugError, Terminated, UsageError, debug_enabled
from ganplug.registry import KINDS, Kind, Registry, get_registry, resolve_kind
from ganplug.train.config import (
    KNOBS,
    RESUMABLE,
    SHORTHANDS,
    SPEC_KIND,
    SPEC_NAME,
    ResolvedConfig,
    TrainConfig,
    as_template,
    command_line_values,
    read_config_file,
    read_toml,
    resolve,
    with_changes,
)

FILE, DIR, COUNT = click.Path(dir_okay=False), click.Path(file_okay=False), click.IntRange(min=1)  # option types
# Options that more than one command takes.
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
CHECKPOINT = click.option(
    "--checkpoint", required=True, type=click.Path(), help="A checkpoint file or a run directory."
)
SEED = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise.")
NO_EMA = click.option(
    "--no-ema", "ema", flag_value=False, default=True, help="Use the raw generator even when the run kept an EMA."
)
DEVICE = click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# -- the group ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ganplug")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors (also GANPLUG_DEBUG=1).")
def cli(debug: bool) -> None:
    """Train GANs on fused C++/CUDA kernels, with architectures, losses and datasets from plugins.

    \b
    Start here:
      ganplug train --arch dcgan --loss wasserstein   # mnist5k, bundled, no download
      ganplug list losses                            # what --loss accepts
      ganplug plugins                                # installed plugins and their status
    """


@cli.command()
@JSON
def plugins(as_json: bool) -> None:
    """List plugins: version, status and what each registers.

    Status: ok; failed (it could not be loaded: skipped); broken (it loaded, but a factory it
    names cannot be imported); disabled (GANPLUG_DISABLE_PLUGINS / GANPLUG_LOAD_PLUGINS).
    Every factory is imported to check it, so this command imports torch.
    """
    registry = get_registry()
    registry.check_factories()
    if as_json:
        _echo_json([info.describe() for info in registry.plugins])
        return
    shadowed = {kind: registry.shadowed(kind) for kind in KINDS}
    for info in registry.plugins:
        origin = f"{info.distribution} {info.version}" if info.distribution else "(not installed)"
        click.echo(f"{info.name}  [{'built-in' if info.builtin else origin}]  {info.status}")
        if info.error:
            click.echo(f"    error: {info.error}")
        if info.traceback and debug_enabled():
            click.echo("    " + info.traceback.rstrip().replace("\n", "\n    "))
        for kind, names in info.registers.items():
            marked = [
                name
                if name not in shadowed[kind]
                else f"{name} (shadowed by plugin {shadowed[kind][name]!r})"
                if info.builtin
                else f"{name} (shadows {name!r} of the built-ins)"
                for name in names
            ]
            click.echo(f"    {KINDS[kind].plural}: {', '.join(marked)}")


@cli.command("list")
@click.argument("kind", metavar="[archs|losses|datasets|metrics|loggers|augmentations]", required=False)
@JSON
def list_command(kind: str | None, as_json: bool) -> None:
    """List architectures, losses, datasets, metrics, loggers or augmentations (all without KIND) with summaries and
    options."""
    kinds = [resolve_kind(kind)] if kind else list(KINDS.values())
    registry = get_registry()
    if as_json:
        described = {
            k.plural: [
                {
                    "plugin": e.plugin,
                    **e.spec.describe(),
                    **({"recipe": _recipe_of(e.spec)} if k.name == "loss" else {}),
                }
                for e in registry.entries(k.name)
            ]
            for k in kinds
        }
        _echo_json(described[kinds[0].plural] if kind else described)
        return
    for number, resolved in enumerate(kinds):
        if not kind:
            click.echo(("\n" if number else "") + f"{resolved.plural}:")
        _list_kind(registry, resolved)


def _list_kind(registry: Registry, kind: Kind) -> None:
    shadowed = registry.shadowed(kind.name)
    for entry in registry.entries(kind.name):
        spec = entry.spec
        aliases = f" (alias {', '.join(spec.aliases)})" if spec.aliases else ""
        source = "" if entry.plugin == "ganplug" else f"  [{entry.plugin}]"
        if spec.name in shadowed:
            source += (
                f"  (shadowed by plugin {shadowed[spec.name]!r}: use ganplug:{spec.name})"
                if entry.plugin == "ganplug"
                else "  (shadows the built-in)"
            )
        click.echo(f"{spec.name}{aliases}{source}")
        click.echo(f"    {spec.summary}")
        if getattr(spec, "conditional", False):
            click.echo("    class-conditional models too (--conditional)")
        if getattr(spec, "num_classes", 0):
            click.echo(f"    {spec.num_classes} classes: its labels can train a --conditional run")
        for option in spec.options:
            choices = f" ({'|'.join(option.choices)})" if option.choices else ""
            click.echo(f"    {option.name}: {option.type.__name__} = {option.default!r}{choices}  {option.help}")
        defaults = getattr(spec, "defaults", None)
        if defaults:
            click.echo(f"    training defaults: {_format_defaults(defaults)}")
        if kind.name == "loss":
            recipe = _recipe_of(spec)
            click.echo(f"    recipe: {_settings(recipe) if isinstance(recipe, dict) else recipe}")
            if spec.shift_invariant:
                click.echo("    shift-invariant scores: --augment-p auto reads them about the real/fake midpoint")
        for loss, arch_recipe in getattr(spec, "recipes", {}).items():
            settings = {**dataclasses.asdict(arch_recipe.recipe), **arch_recipe.loss_options}
            click.echo(f"    recipe with --loss {loss}: {_settings(settings)}")


def _settings(settings: dict[str, Any]) -> str:
    """``n_critic=5, betas=[0.0, 0.9]``: a recipe's settings as ``ganplug list`` shows them."""
    return ", ".join(f"{key}={list(v) if isinstance(v, tuple) else v}" for key, v in settings.items())


def _recipe_of(spec: Any) -> dict[str, Any] | str:
    """The training recipe of loss ``spec`` with its default options (``{"n_critic", "optimizer",
    "lr_g", "lr_d", "betas"}``), or why it could not be read."""
    from ganplug.registry import loss_recipe

    try:
        return dataclasses.asdict(loss_recipe(spec, spec.resolve_options({})))
    except GanplugError as error:
        return f"unavailable ({error})"


def _format_defaults(defaults: dict[str, Any]) -> str:
    """``steps=6000, ema=0.999, mlp: g_widths=64,64 ..., dcgan data: image_size=32, wasserstein: n_critic=2 ...``
    for ``ganplug list datasets`` (architecture options, the data's options per architecture, loss recipes)."""
    tables = {"arch_options": "", "data_options": " data", "loss_recipes": ""}
    parts = [f"{key}={value}" for key, value in defaults.items() if key not in tables]
    for table, label in tables.items():
        for name, options in defaults.get(table, {}).items():
            parts.append(f"{name}{label}: " + " ".join(f"{key}={value}" for key, value in options.items()))
    return ", ".join(parts)


# -- train ---------------------------------------------------------------------------------------


def _knob_option(name: str) -> Callable[[Any], Any]:
    """The click option of the :class:`~ganplug.train.config.Knob` of TrainConfig field ``name``."""
    meta = KNOBS[name]
    kwargs: dict[str, Any] = {"help": meta.help, "metavar": meta.metavar}
    if meta.completes:  # the names of that plugin kind
        kwargs["shell_complete"] = lambda ctx, param, incomplete: [
            name for name in get_registry().names(meta.completes) if name.startswith(incomplete)
        ]
    if meta.kind is bool:
        kwargs.update(is_flag=True, default=None)
    elif isinstance(meta.kind, str):  # "pairs", "named_pairs", "names"
        kwargs["multiple"] = True
    else:
        kwargs["type"] = click.Choice(meta.choices) if meta.choices else meta.kind
    if meta.bare is not None:
        kwargs.update(is_flag=False, flag_value=meta.bare)
    if meta.kind is bool and name in RESUMABLE:  # --no-amp, --no-cuda-graphs: switch it off on a resume
        return click.option(f"{meta.flag}/--no-{meta.flag[2:]}", **kwargs)
    return click.option(meta.flag, **kwargs)


def _train_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``ganplug train``'s options: one per knob of TrainConfig that has a flag, then the
    shorthands for loss and dataset options and the options of the command itself."""
    options = [_knob_option(name) for name, meta in KNOBS.items() if meta.help]
    options += [
        click.option("--label-smoothing", type=float, help="One-sided label smoothing s (bce, minimax)."),
        click.option("--label-noise", type=float, help="Probability of flipping D's targets (bce, minimax)."),
        click.option("--data-dir", type=DIR, help="Where torchvision datasets and image folders live."),
        click.option(
            "--download", is_flag=True, default=None, help="Allow downloading a torchvision dataset into --data-dir."
        ),
        click.option("--image-size", type=int, help="Resize images to this square size (8-128)."),
        click.option("--config", "config_file", type=FILE, help="TOML file of these options (the command line wins)."),
        click.option("--out", type=DIR, help="Run directory [default: runs/ARCH-LOSS-DATASET, numbered]."),
        click.option("--resume", type=click.Path(), help="Continue a run: its directory or a checkpoint file."),
        click.option(
            "--fork",
            type=DIR,
            metavar="DIR",
            help="With --resume: continue in the new directory DIR (a branch); the original run stays as it is.",
        ),
        click.option(
            "--discard-newer",
            is_flag=True,
            default=None,
            help="With --resume of an older checkpoint: rewind the run to it, deleting its later checkpoints and samples.",
        ),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar, log lines only."),
        click.option(
            "--nproc",
            type=COUNT,
            help="Train data-parallel in N processes (torchrun; gloo on CPU, NCCL on GPUs); --batch-size is the global batch.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_config(given: dict[str, Any]) -> ResolvedConfig:
    """The resolved config of the command line's explicitly given values: ``--config``'s file (less what belonged to
    an arch, loss or dataset the command line replaces: :func:`~ganplug.train.config.as_template`), the flags over
    it, then the command's one :func:`~ganplug.train.config.resolve`. Checked here, before torch loads."""
    config = TrainConfig()
    if given.get("config_file"):
        config = as_template(
            read_config_file(given["config_file"]), {name: given.get(name) for name in SPEC_NAME.values()}
        )
    config = with_changes(config, command_line_values(given))
    registry = get_registry()
    for key, (table, option, flag) in SHORTHANDS.items():
        if given.get(key) is not None:
            spec = registry.resolve(SPEC_KIND[table], getattr(config, SPEC_NAME[table]))
            if option not in {o.name for o in spec.options}:
                raise UsageError(f"{flag} does not apply to {spec.kind} {spec.name!r} (it has no option {option!r})")
    return resolve(config, registry)


def _default_run_dir(config: ResolvedConfig) -> Path:
    """``runs/ARCH-LOSS-DATASET`` (``-2``, ``-3`` ... when taken), created and locked for this
    process, so two runs started together never share one."""
    from ganplug.train.rundir import claim_new_dir

    name = f"{config.arch}-{config.loss}-{config.dataset}" + ("-conditional" if config.conditional else "")
    return claim_new_dir(Path("runs") / name.replace(":", "_"))


@cli.command()
@_train_options
@click.pass_context
def train(ctx: click.Context, **given: Any) -> None:
    """Train a GAN; writes config, metrics.jsonl, sample grids and checkpoints to --out.

    \b
    Examples:
      ganplug train --arch dcgan --loss wasserstein
      ganplug train --arch mlp --loss bce --dataset ring8 --steps 5000
      ganplug train --resume runs/dcgan-wasserstein-mnist5k --steps 4000
    """
    source = ctx.get_parameter_source
    explicit = {name: value for name, value in given.items() if source(name) is not click.core.ParameterSource.DEFAULT}
    torchrun_worker = os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1")  # launched by torchrun
    nproc = explicit.pop("nproc", None)
    _check_resume_flags(explicit)
    if nproc is not None and nproc > 1:
        from ganplug.train.distributed import launch

        if torchrun_worker:
            raise UsageError("--nproc: already running under torchrun; drop --nproc")
        if explicit.get("fork"):  # branch once, here; every rank resumes the branch
            explicit["resume"] = str(_resumed(explicit)[1].path)
            del explicit["fork"]
        if not explicit.get("resume") and not explicit.get("out"):  # pick the directory once, for every rank
            from ganplug.train.rundir import unlock_run_dir

            explicit["out"] = str(_default_run_dir(build_config(explicit)))
            unlock_run_dir(Path(explicit["out"]))  # rank 0's process takes it
        args: list[str] = ["train"]
        for param in ctx.command.params:
            if param.name not in explicit or not isinstance(param, click.Option):
                continue
            flag = next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
            value = explicit[param.name]
            if param.is_flag:
                args += [flag] if value else list(param.secondary_opts[:1])
            elif param.multiple:
                args += [text for item in value for text in (flag, str(item))]
            else:
                args += [flag, str(value)]
        raise click.exceptions.Exit(launch(nproc, args))
    peer_lost: Any = ()  # catches nothing: only a torchrun worker has peers (and the import loads torch)
    if torchrun_worker:
        from ganplug.train.distributed import PeerLost as peer_lost

        _continue_after_torchrun_restart(explicit)
    code = 0
    try:
        if explicit.get("resume"):
            _resume(explicit)
        else:
            config = build_config(explicit)
            from ganplug.train import train as run_training
            from ganplug.train.rundir import unlock_run_dir

            run_dir = Path(explicit["out"]) if explicit.get("out") else _default_run_dir(config)
            try:
                run_training(config, run_dir, quiet=bool(explicit.get("quiet")))
            finally:
                if not explicit.get("out"):
                    unlock_run_dir(run_dir)  # the claim of _default_run_dir
    except peer_lost as lost:  # a fresh run raises it only from run_training, so run_dir is set
        _exit_peer_lost(lost, explicit.get("fork") or explicit.get("resume") or explicit.get("out") or run_dir)
    except KeyboardInterrupt as stop:  # Ctrl-C (130) or SIGTERM (128 + 15): what was saved is said
        code = stop.exit_code if isinstance(stop, Terminated) else 130
        if not getattr(stop, "reported", False):  # the trainer said nothing yet (start-up)
            what = f"terminated by signal {stop.signum}" if isinstance(stop, Terminated) else "interrupted"
            click.echo(f"ganplug: {what}", err=True)
    if torchrun_worker:  # done and flushed: skip gloo's racy interpreter shutdown (see exit_worker)
        from ganplug.train.distributed import exit_worker

        exit_worker(code)
    if code:
        raise click.exceptions.Exit(code)


def _continue_after_torchrun_restart(explicit: dict[str, Any]) -> None:
    """Under ``torchrun --max-restarts N`` (N > 0), make a restarted worker continue its run (``explicit`` changed
    in place). torchrun reruns the same command line: ``--out DIR`` holding a checkpoint becomes ``--resume DIR``;
    without one, what the run logged is dropped and it starts again into DIR. Decided by TORCHELASTIC_MAX_RESTARTS,
    not RESTART_COUNT (0 on a node restarted for a membership change), so every rank chooses alike. Rank 0 warns
    when the rendezvous store is shared with the workers (its keys outlive a restart, pytorch/pytorch#135712).
    """
    try:
        max_restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    except ValueError:
        max_restarts = 0
    if max_restarts <= 0:
        return
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("RANK") == "0":
        click.echo(
            "ganplug: warning: torchrun --max-restarts with the rendezvous store shared with the workers "
            "(the default): restarted workers can read the addresses of those they replace and fail or hang "
            "joining; export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun on every node",
            err=True,
        )
    if explicit.get("resume"):
        return
    if not explicit.get("out"):
        raise UsageError(
            "torchrun --max-restarts: pass --out DIR, so that a restarted worker finds the run to continue"
        )
    from ganplug.train.rundir import CONFIG_FILE, clear_run, has_checkpoint

    run_dir = Path(explicit["out"])
    if has_checkpoint(run_dir):
        explicit["resume"] = str(explicit.pop("out"))
        explicit.pop("config_file", None)  # what it set is in the stored config
    elif (run_dir / CONFIG_FILE).is_file():  # every rank clears alike; none writes before all have checked
        clear_run(run_dir)


def _exit_peer_lost(lost: Exception, run_dir: str | Path) -> None:
    """A torchrun worker whose peer died: one line saying so and how to continue, then exit 1 at
    once (gloo may abort the interpreter's shutdown after a broken group; see exit_worker)."""
    import shlex

    from ganplug.train.distributed import exit_worker
    from ganplug.train.rundir import CHECKPOINTS

    if debug_enabled():
        raise lost
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.parent.name == CHECKPOINTS:  # --resume of a checkpoint file
        run_dir = run_dir.parent.parent
    click.echo(
        f"Error: {lost}; its checkpoints are kept: continue with `ganplug train --resume {shlex.quote(str(run_dir))}` "
        "(in one process, with --nproc N, or under torchrun)",
        err=True,
    )
    exit_worker(getattr(lost, "exit_code", 1))


def _check_resume_flags(explicit: dict[str, Any]) -> None:
    """UsageError for options that do not go with ``--resume`` (or, without it, with ``--fork``)."""
    for flag in ("fork", "discard_newer"):
        if explicit.get(flag) and not explicit.get("resume"):
            raise UsageError(f"--{flag.replace('_', '-')} applies to a resume: pass --resume RUN_DIR or a checkpoint")
    if not explicit.get("resume"):
        return
    if explicit.get("out"):
        raise UsageError("--resume continues in the run's own directory (or a new one with --fork DIR); drop --out")
    if explicit.get("config_file"):
        raise UsageError("--resume takes the run's stored config; drop --config")
    if explicit.get("fork") and explicit.get("discard_newer"):
        raise UsageError("--fork leaves the original run as it is, so --discard-newer does not apply: pass one of them")


def _resumed(explicit: dict[str, Any]) -> tuple[ResolvedConfig, Any]:
    """``--resume PATH``: the config to continue with (the resume's changes checked) and the checkpoint to continue
    from; with ``--fork DIR``, the run branched into DIR and the checkpoint there."""
    from ganplug.train.checkpoint import LoadedCheckpoint, check_belongs, fork_run, resume_config, stored_config

    loaded = LoadedCheckpoint.read(Path(explicit["resume"]))  # a file that is no checkpoint is named first
    config = resume_config(stored_config(loaded.state), explicit, loaded.state.get("provenance"))
    if explicit.get("fork"):
        check_belongs(loaded)
        loaded = fork_run(loaded, Path(explicit["fork"]))
    return config, loaded


def _resume(explicit: dict[str, Any]) -> None:
    """``--resume PATH``: continue the run (in place, or a branch with ``--fork DIR``); a run
    stopped before its first checkpoint trains again from step 0 with its config.toml (and the
    changes a resume allows), in place of what it had logged."""
    from ganplug.train import train as run_training
    from ganplug.train.checkpoint import resume_config, run_dir_of
    from ganplug.train.rundir import CONFIG_FILE, clear_run, has_checkpoint

    target = Path(explicit["resume"])
    quiet = bool(explicit.get("quiet"))
    if target.is_dir() and (target / CONFIG_FILE).is_file() and not has_checkpoint(target):
        if explicit.get("fork") or explicit.get("discard_newer"):
            raise UsageError(f"{target} has no checkpoint to branch from or rewind to: drop --fork/--discard-newer")
        path = target / CONFIG_FILE
        try:
            stored = ResolvedConfig.from_stored(read_toml(str(path)))
        except (KeyError, TypeError) as error:
            raise UsageError(f"{path} does not fit this ganplug ({error}): start a new run with --out") from None
        config = resume_config(stored, explicit)
        click.echo(
            f"ganplug: {target} has no checkpoint yet (stopped before its first one): training it again from step 0",
            err=True,
        )
        clear_run(target)
        run_training(config, target, quiet=quiet)
        return
    config, loaded = _resumed(explicit)
    discard = bool(explicit.get("discard_newer"))
    run_training(config, run_dir_of(loaded.path), resume_from=loaded, discard_newer=discard, quiet=quiet)


# -- eval, sample, plot ------------------------------------------------------------------------------


@cli.command("eval")
@CHECKPOINT
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    metavar="NAME",
    help="Only this metric (repeatable) [default: every one that applies].",
)
@JSON
@SEED
@NO_EMA
@click.option(
    "--num-samples",
    type=COUNT,
    metavar="N",
    help="Samples drawn per metric, e.g. 10000 for FID comparable with papers [default: each metric's n_samples].",
)
@click.option(
    "--metric-opt",
    "options",
    multiple=True,
    metavar="NAME.KEY=VALUE",
    help="A metric's option, e.g. mnist-quality.k=3 (repeatable; see: ganplug list metrics).",
)
@DEVICE
def eval_command(checkpoint: str, as_json: bool, **options: Any) -> None:
    """Score a trained generator with every metric that applies to its dataset.

    Exit 1 when a metric failed (its plugin could not build or compute it); a metric skipped
    because its optional package or files are missing here (said why) leaves the exit code 0.

    \b
    Examples:
      ganplug eval --checkpoint runs/mlp-bce-ring8
      ganplug eval --checkpoint runs/mlp-bce-ring8/checkpoints/step_000500.pt --json
      ganplug eval --checkpoint runs/dcgan --metric inception --num-samples 10000
      ganplug eval --checkpoint runs/mlp-bce-ring8 --metric-opt modes.threshold_std=2
      ganplug list metrics                          # what is computed, for which datasets
    """
    from ganplug.evaluation import evaluate
    from ganplug.train.progress import format_number
    from ganplug.train.threads import torch_threads

    with torch_threads(0):  # the CPUs this process may use, as a training run
        report = evaluate(checkpoint, **options)  # the other options are evaluate's keyword arguments
    if as_json:
        nan_as_null = {
            name: {key: (v if v == v else None) for key, v in values.items()}
            for name, values in report["metrics"].items()
        }
        _echo_json({**report, "metrics": nan_as_null})
    else:
        weights = "EMA" if report["ema"] else "raw"
        click.echo(
            f"{report['checkpoint']}: step {report['step']}, {weights} generator, dataset {report['dataset']}, seed {report['seed']}"
        )
        for name, values in report["metrics"].items():
            click.echo(f"{name} ({report['num_samples'][name]} samples)")
            width = max((len(key) for key in values), default=0)
            for key, value in values.items():
                click.echo(f"    {key:<{width}}  {format_number(value)}")
        for outcome in ("skipped", "failed"):
            for name, why in report[outcome].items():
                click.echo(f"{name}: {outcome}: {why}")
    if report["failed"]:
        raise click.exceptions.Exit(1)


@cli.command()
@CHECKPOINT
@click.option("-n", "--num", type=COUNT, default=64, show_default=True, help="How many samples.")
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Output: .png (grid or plot), .npy, .pt, or a folder (DIR/, one PNG per image).",
)
@SEED
@click.option(
    "--class",
    "class_",
    type=int,
    metavar="K",
    help="Conditional runs: draw every sample of class K [default: one row per class in a picture, else each class in turn].",
)
@NO_EMA
@DEVICE
def sample(checkpoint: str, num: int, out: str, seed: int, class_: int | None, ema: bool, device: str) -> None:
    """Draw samples from a trained generator into a picture, an array file or a folder of images.

    --out ending in / (or an existing folder, or a name without a suffix) writes one PNG per
    image at its own size, 000000.png, 000001.png, ..., for FID tools such as torch-fidelity
    or clean-fid; the folder must be new or empty.

    A conditional run (trained with --conditional) draws the class --class K; without it a
    picture of images has one row per class (N // classes of each) and other outputs take the
    classes in turn (sample i is of class i mod classes).

    \b
    Examples:
      ganplug sample --checkpoint runs/dcgan-wasserstein-mnist5k --out grid.png
      ganplug sample --checkpoint runs/dcgan-wasserstein-mnist5k -n 10000 --out fakes/
      ganplug sample --checkpoint runs/mlp-bce-ring8 -n 5000 --out points.npy
      ganplug sample --checkpoint runs/dcgan-hinge-digits-conditional --class 3 --out three.png
    """
    from ganplug.generate import load_generator
    from ganplug.generate import sample as draw
    from ganplug.noise import grid_labels
    from ganplug.train.render import check_new_folder, save_image_files, save_samples
    from ganplug.train.threads import torch_threads

    target = Path(out)
    folder = out.endswith(("/", os.sep)) or target.is_dir() or not target.suffix
    if folder:
        check_new_folder(target)  # before the generator is loaded
    generator = load_generator(checkpoint, ema=ema, device=device)
    labels: Any = class_
    nrow, classes = None, ""
    if generator.num_classes and class_ is None:
        if not folder and target.suffix.lower() == ".png" and len(generator.data_shape) == 3:
            labels, nrow = grid_labels(num, generator.num_classes)
            num = len(labels)
            classes = f" ({generator.num_classes} classes x {nrow})" if num >= generator.num_classes else ""
        else:
            classes = f" (classes 0..{generator.num_classes - 1} in turn)"
    elif class_ is not None:
        classes = f" of class {class_}"
    with torch_threads(0):  # the CPUs this process may use, as a training run
        samples = draw(generator, num, labels=labels, seed=seed)
    if folder:
        paths = save_image_files(samples, target, value_range=generator.value_range)
        click.echo(f"wrote {len(paths)} images{classes} to {target}{os.sep} ({paths[0].name} .. {paths[-1].name})")
        return
    save_samples(samples, target, value_range=generator.value_range, nrow=nrow)
    click.echo(f"wrote {num} samples{classes} to {out}")


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR|METRICS_FILE", type=click.Path())
@click.option("--out", type=FILE, help="Output .png, .svg or .pdf [default: losses.png beside metrics.jsonl].")
def plot(run_dir: str, out: str | None) -> None:
    """Draw a run's metrics.jsonl: D and G loss against step, and its evaluations if any.

    Takes the run directory or the metrics file itself. Training writes the same
    RUN_DIR/losses.png when it ends.

    \b
    Examples:
      ganplug plot runs/mlp-bce-ring8
      ganplug plot runs/mlp-bce-ring8 --out ring8-losses.svg
      ganplug plot copied/metrics.jsonl               # writes copied/losses.png
    """
    from ganplug.plots import write_loss_plot

    warn = lambda text: click.echo(f"warning: {text}", err=True)  # noqa: E731
    click.echo(f"wrote {write_loss_plot(Path(run_dir), Path(out) if out else None, warn=warn)}")


# -- bench -----------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--device", default="auto", show_default=True, help="auto (cuda when visible, else cpu), cpu, cuda or cuda:N."
)
@click.option(
    "--kernels", "kernel_rows", is_flag=True, help="The fused ops only (with --steps: both, as without either)."
)
@click.option("--steps", "step_rows", is_flag=True, help="The training steps only (with --kernels: both).")
@click.option(
    "--only",
    multiple=True,
    metavar="NAME",
    help="Only rows whose name contains NAME, e.g. dropout or a-mlp (repeatable).",
)
@click.option("--quick", is_flag=True, help="Short repeats (3 rounds): a smoke run, noisy numbers.")
@click.option(
    "--threads", metavar="N[,M...]", help="torch threads, the same for every column of a row [default: torch's own]."
)
@click.option(
    "--no-compile", is_flag=True, help="Skip the torch.compile columns (their warm-up is most of the run time)."
)
@click.option(
    "--out", default="bench-results", show_default=True, type=DIR, help="Directory of bench.md and bench.png."
)
def bench(
    device: str,
    kernel_rows: bool,
    step_rows: bool,
    only: tuple[str, ...],
    quick: bool,
    threads: str | None,
    no_compile: bool,
    out: str,
) -> None:
    """Time ganplug here: fused ops and training steps against plain PyTorch and torch.compile.

    Kernels: each fused op (fwd, fwd+bwd) against the eager PyTorch a user writes and
    torch.compile of it. Steps: ganplug's training step in cases a-h (their names give the
    architecture, loss and data) against the plain loop with the same weights (checked to compute
    the same) and torch.compile of that loop. On CUDA also in bfloat16 (kernels) and under bf16
    autocast (steps).

    Every row times its columns interleaved in one run (warm-up, CUDA synchronised, median of
    the rounds); ratios are other/ganplug, so > 1 means ganplug is faster. The tables are printed
    and written to OUT/bench.md, their ratios drawn in OUT/bench.png. A full run takes minutes,
    mostly torch.compile warm-up. Numbers from a busy machine are not worth keeping.

    \b
    Examples:
      ganplug bench                                  # everything, on cuda when visible
      ganplug bench --kernels --device cpu --threads 1,2
      ganplug bench --steps --only a-mlp --quick     # one step case, a smoke run
      ganplug bench --only "dropout | fwd |"         # one op, the forward pass
    """
    import torch

    from ganplug.bench.runner import run

    try:
        counts = [torch.get_num_threads()] if threads is None else [int(part) for part in threads.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise UsageError(f"--threads expects positive counts like 1 or 1,2, got {threads!r}")
    run(
        device=device,
        kernel_rows=kernel_rows or not step_rows,
        step_rows=step_rows or not kernel_rows,
        only=only,
        quick=quick,
        threads=counts,
        out=Path(out),
        with_compile=not no_compile,
        echo=click.echo,
        progress=lambda line: click.echo(line, err=True),
    )


# -- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and a non-zero exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    previous = os.environ.get(DEBUG_VARIABLE)
    if "--debug" in args:  # accepted anywhere on the line; the variable reaches torchrun's workers too
        os.environ[DEBUG_VARIABLE] = "1"
    try:
        code = _run([arg for arg in args if arg != "--debug"], debug_enabled())
    finally:
        if previous is None:
            os.environ.pop(DEBUG_VARIABLE, None)
        else:
            os.environ[DEBUG_VARIABLE] = previous
    sys.exit(code if isinstance(code, int) else 0)


_NOT_PERMITTED = (errno.EACCES, errno.EPERM, errno.EROFS)  # the user's paths: exit 2, one line
_ELSEWHERE = {  # what else a command that could not write may do
    "train": "or train into another directory (--out DIR; a resumed run: --fork DIR)",
    "sample": "or pass --out in a writable directory",
    "plot": "or pass --out FILE in a writable directory",
}


def _run(args: list[str], debug: bool) -> int:
    """The command's exit code; errors printed as one line (re-raised with ``debug``)."""
    try:
        return cli.main(args=args, prog_name="ganplug", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort) as stop:
        if not getattr(stop, "reported", False):  # the trainer said what it saved
            click.echo("ganplug: interrupted", err=True)
        return 130
    except Exception as error:
        if debug:
            raise
        code, message = 1, f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)"
        if isinstance(error, click.UsageError):
            command = error.ctx.command_path if error.ctx else "ganplug"
            code, message = error.exit_code, f"{error.format_message()} (see: {command} --help)"
        elif isinstance(error, click.ClickException):
            code, message = error.exit_code, error.format_message()
        elif isinstance(error, GanplugError):
            code, message = error.exit_code, str(error)
        elif isinstance(error, OSError) and error.errno in _NOT_PERMITTED:  # a read-only run directory, --out, ...
            command = next((arg for arg in args if not arg.startswith("-")), "")
            where = f": {error.filename}" if error.filename else ""
            elsewhere = _ELSEWHERE.get(command, "or run where ganplug may write")
            code, message = 2, f"{error.strerror}{where}: check the permissions of it and its directory, {elsewhere}"
        click.echo(f"Error: {message}", err=True)
        return code


if __name__ == "__main__":
    main()
