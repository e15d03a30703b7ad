"""The run configuration: every knob of ``ganplug train`` (torch-free, so the CLI stays fast) and its one resolver.

Each :class:`TrainConfig` field carries a :class:`Knob` (flag, help, check), from which :mod:`ganplug.cli` makes
the options and :func:`validate_config` the checks: a new knob is one field here. :func:`resolve` applies the
layers once per command, lowest first:

1. the base defaults (a field's default, or its knob's ``base`` where a dataset may set it);
2. the loss's recipe for its options (:func:`ganplug.registry.loss_recipe`), in what is still ``None`` at the end;
3. the architecture's recipe for the loss (``ArchitectureSpec.recipes``): a whole recipe, and loss options;
4. the dataset's ``defaults``: training knobs, ``arch_options`` and ``data_options`` per architecture,
   ``loss_recipes`` per loss;
5. a config file (``--config FILE.toml``; under other names first through :func:`as_template`);
6. the command line, or the values given in Python.

``None`` means "not set here; take it from a lower layer". The command line, a config file and
``train(TrainConfig(...))`` all go through :func:`resolve`, so the same names train the same run. Its result, a frozen
:class:`ResolvedConfig`, is what every later layer trusts. A resume resolves the run's stored config with the changes
asked for (:func:`resolve_resume`); :data:`RESUMABLE` lists what may change.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ganplug.errors import UsageError
from ganplug.plugin import LATENTS, RECIPE_KEYS
from ganplug.registry import Registry, get_registry, loss_recipe

# Command-line flags that are shorthands for an option of the chosen loss or dataset:
# parameter name -> (config attribute, option name, flag).
SHORTHANDS = {
    "label_smoothing": ("loss_options", "label_smoothing", "--label-smoothing"),
    "label_noise": ("loss_options", "label_noise", "--label-noise"),
    "data_dir": ("data_options", "root", "--data-dir"),
    "download": ("data_options", "download", "--download"),
    "image_size": ("data_options", "image_size", "--image-size"),
}
# Config attribute -> the kind of spec its options belong to.
SPEC_KIND = {"arch_options": "architecture", "loss_options": "loss", "data_options": "dataset"}
# Config attribute -> the config attribute naming its spec.
SPEC_NAME = {"arch_options": "arch", "loss_options": "loss", "data_options": "dataset"}


def parse_pairs(flag: str, pairs: Any) -> dict[str, str]:
    """``("width=32", "critic-norm = layer")`` -> ``{"width": "32", "critic_norm": "layer"}`` (``--arch-opt`` and
    friends); UsageError naming ``flag`` for a pair without ``KEY=``."""
    options: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got {pair!r}")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def parse_named_pairs(flag: str, pairs: Any) -> dict[str, dict[str, str]]:
    """``("diffaugment.policy=color", "flip.vertical = true")`` -> ``{"diffaugment": {"policy": "color"}, "flip":
    {"vertical": "true"}}`` (``--augment-opt``); UsageError naming ``flag`` for a pair without ``NAME.KEY=``."""
    options: dict[str, dict[str, str]] = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition("=")
        name, dot, option = key.strip().rpartition(".")
        if not sep or not dot or not name.strip() or not option.strip():
            raise UsageError(f"{flag} expects NAME.KEY=VALUE, e.g. diffaugment.policy=color,cutout, got {pair!r}")
        options.setdefault(name.strip(), {})[option.strip().replace("-", "_")] = value.strip()
    return options


AUGMENT_AUTO = "auto"  # augment_p of an adaptive probability (ganplug.train.augment)


def parse_augment_p(text: Any) -> float | str:
    """``--augment-p``: ``"auto"``, or a number as a float; UsageError otherwise."""
    if str(text).strip().lower() == AUGMENT_AUTO:
        return AUGMENT_AUTO
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--augment-p expects a probability in [0, 1] or auto, got {text!r}") from None


def parse_betas(text: str) -> tuple[float, float]:
    """``"0.5,0.999"`` -> ``(0.5, 0.999)``; UsageError unless two numbers in [0, 1)."""
    try:
        b1, b2 = (float(part) for part in str(text).split(","))
    except ValueError:
        raise UsageError(f"--betas expects two numbers like 0.5,0.999, got {text!r}") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise UsageError(f"--betas must lie in [0, 1), got {text!r}")
    return (b1, b2)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_tables(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(table, dict) for table in value.values())


@dataclass(frozen=True)
class Knob:
    """What one :class:`TrainConfig` field is to the command line, its check and a resume.

    A valid value passes ``check``; any other is refused as "NAME must be MUST, got VALUE: pass e.g. FLAG EXAMPLE"
    (without an example, no hint). :data:`KNOBS` makes ``check`` and ``must`` from ``kind``, from ``choices`` ("pass
    FLAG CHOICE"), and for integers from ``low`` (the least value) and ``note`` ("an integer >= LOW (NOTE)").
    """

    help: str = ""  # the flag's --help; "" for no flag. Without a final period, " [default: ...]." follows
    # the flag's value: int, float, str, bool (on-off), "names" (repeatable), "pairs" (repeatable KEY=VALUE into
    # the option table), "named_pairs" (repeatable NAME.KEY=VALUE into the table of NAME)
    kind: Any = str
    flag: str = ""  # "--" + the field's name, unless given; click names its parameter after it
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    bare: Any = None  # the value of the flag given without one (--ema)
    completes: str | None = None  # the plugin kind whose names complete the flag
    parse: Callable[[Any], Any] | None = None  # the flag's text -> the value (--betas)
    base: Any = None  # the base layer's value, where a dataset's defaults may set the knob (it stays None till then)
    default_text: str | None = None  # what --help says the default is, where not the base or the default
    check: Callable[[Any], bool] | None = None
    must: str = ""
    low: int | None = None
    note: str = ""
    example: Any = None


def knob(default: Any = None, **meta: Any) -> Any:
    """A :class:`TrainConfig` field with its :class:`Knob`; a list or dict default is copied per config."""
    metadata = {"knob": Knob(**meta)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _name_knob(default: str, what: str, kind: str, table: str) -> Any:
    help = f"{what} [default: {default}]; see `ganplug list {kind}`."
    must = f'a name, a string such as {SPEC_NAME[table]} = "{default}" (its options go in a [{table}] table)'
    return knob(default, help=help, completes=SPEC_KIND[table], check=_is_name, must=must)


def _options_knob(flag: str, what: str) -> Any:
    return knob({}, help=f"{what} option (repeatable).", kind="pairs", flag=flag, metavar="KEY=VALUE")


def _every_knob(default: int, what: str, low: int = 0, note: str = "0 = end only", example: int = 500) -> Any:
    help = f"Steps between {what}" + (f"; {note}" if low == 0 else "")
    return knob(default, help=help, kind=int, low=low, note=note if low == 0 else "", example=example)


def _on_off(help: str) -> Any:
    return knob(False, help=help, kind=bool)


LOSS_RECIPE = "the recipe for the loss: the dataset's, else the architecture's, else the loss's"


def _lr_knob(help: str) -> Any:
    positive = lambda value: _is_number(value) and value > 0  # noqa: E731
    return knob(help=help, kind=float, default_text=LOSS_RECIPE, check=positive, must="a number > 0", example="2e-4")


@dataclass
class TrainConfig:
    arch: str = _name_knob("dcgan", "Architecture", "archs", "arch_options")
    loss: str = _name_knob("wasserstein", "Loss", "losses", "loss_options")
    dataset: str = _name_knob("mnist5k", "Dataset", "datasets", "data_options")
    arch_options: dict[str, Any] = _options_knob("--arch-opt", "Architecture")
    loss_options: dict[str, Any] = _options_knob("--loss-opt", "Loss")
    data_options: dict[str, Any] = _options_knob("--data-opt", "Dataset")
    steps: int | None = knob(help="Generator updates", kind=int, base=2000, low=1, example=2000)
    batch_size: int | None = knob(help="Samples per batch", kind=int, base=64, low=1, example=64)
    n_critic: int | None = knob(
        help="Critic updates per generator update", kind=int, default_text=LOSS_RECIPE, low=1, example=5
    )
    pack: int | None = knob(
        help="PacGAN: the discriminator judges M samples at once (1 = off)",
        kind=int,
        metavar="M",
        base=1,
        low=1,
        note="1 = off",
        example=2,
    )
    conditional: bool = _on_off(
        "Class-conditional G and D on the dataset's labels (a projection discriminator); samples come one row per class."
    )
    optimizer: str | None = knob(
        help="Optimiser of both networks", choices=("adam", "rmsprop"), default_text=LOSS_RECIPE
    )
    lr_g: float | None = _lr_knob("Generator learning rate")
    lr_d: float | None = _lr_knob("Critic learning rate")
    betas: tuple[float, float] | None = knob(  # Adam only
        help="Adam betas",
        metavar="B1,B2",
        parse=parse_betas,
        default_text=LOSS_RECIPE,
        check=lambda v: len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
        must="two numbers in [0, 1)",
        example="0.5,0.999",
    )
    # Learning-rate schedule: "none", or "linear": at generator step t (0-based) both optimisers
    # use base_lr * (1 - t / steps), ``steps`` being this config's (``--resume --steps`` updates it).
    lr_decay: str | None = knob(
        help="Learning-rate schedule: none, or linear decay to 0 over --steps",
        choices=("none", "linear"),
        base="none",
        example="linear (or none)",
    )
    latent_dim: int | None = knob(  # resolved when the data's shape is known (ganplug.train.build)
        help="Size of z", kind=int, default_text="the dataset's, else 64 for images, 8 otherwise", low=1, example=64
    )
    latent: str | None = knob(help="Distribution of z", choices=LATENTS, default_text="the dataset's")
    ema: float | None = knob(  # the decay of an exponential moving average of G
        help="Keep an EMA of G (decay, 0.999 when given bare); samples use it",
        kind=float,
        bare=0.999,
        base=0.0,
        default_text="the dataset's, else off",
        check=lambda v: _is_number(v) and 0 <= v < 1,
        must="a decay in [0, 1)",
        example="0.999 (0 = off)",
    )
    amp: bool = _on_off("bf16 autocast (CUDA only).")
    cuda_graphs: bool = _on_off(  # ganplug.train.graphs
        "Capture the whole step (critic updates with their penalties, generator update, optimiser steps) as one CUDA "
        "graph and replay it: fewer launches for small models. Runs the eager step instead, saying why in one line, on "
        "CPU, with --nproc > 1, with --lr-decay linear, with lazy R1/R2 (r1_every > 1), with a loss whose state changes "
        "every step or that synchronises with the host (found before capturing), and if batch shapes change; a capture "
        "that still fails stops the run with its checkpoint (resume with --no-cuda-graphs). Same maths; on a GPU equal "
        "to the eager step within float tolerance. Not yet run on a GPU; see docs/kernels.md."
    )
    device: str = knob(
        "auto", help="auto, cpu, cuda or cuda:N", check=_is_name, must='a name, a string such as device = "auto"'
    )
    threads: int = knob(  # applied by ganplug.train.train (ganplug.train.threads)
        0,
        help="CPU threads of torch; 0 = the CPUs this process may use (its CPU affinity and cgroup quota), or "
        "OMP_NUM_THREADS where that is set",
        kind=int,
        low=0,
        note="0 = the CPUs this process may use",
        example=2,
    )
    seed: int = knob(0, help="Seed of every random choice", kind=int)
    sample_every: int = _every_knob(250, "sample grids")
    checkpoint_every: int = _every_knob(500, "checkpoints")
    log_every: int = _every_knob(10, "metrics.jsonl lines", low=1, example=10)
    eval_every: int = _every_knob(
        0, "evaluations of the metrics (as `ganplug eval`) logged to metrics.jsonl", note="0 = off"
    )
    num_samples: int = knob(64, kind=int, low=1)  # images in a sample grid (fixed noise); no flag
    on_nan: str = knob(
        "stop",
        help="A non-finite loss or weight: stop the run (keeping the last good checkpoint) or skip the step",
        choices=("stop", "skip"),
    )
    loggers: list[str] = knob(  # --logger NAME: each metrics line, picture, evaluation
        [],
        help="Also send metrics, evaluations and sample pictures to this logger (repeatable), e.g. tensorboard; "
        "see `ganplug list loggers`. metrics.jsonl is always written.",
        kind="names",
        flag="--logger",
        metavar="NAME",
        completes="logger",
        must='a list of names such as loggers = ["tensorboard"]',
    )
    logger_options: dict[str, dict[str, Any]] = knob(  # {logger name: {option: value}}
        {}, check=_is_tables, must="a table per logger ([logger_options.NAME])"
    )
    augment: list[str] = knob(  # ganplug.train.augment
        [],
        help="Augment everything D sees (real and generated batches, the penalties' inputs) with this augmentation "
        "(repeatable, applied in order), e.g. diffaugment; see `ganplug list augmentations`.",
        kind="names",
        flag="--augment",
        metavar="NAME",
        completes="augmentation",
        must='a list of names such as augment = ["diffaugment"]',
    )
    augment_options: dict[str, dict[str, Any]] = knob(  # {augmentation name: {option: value}}
        {},
        help="An augmentation's option, e.g. diffaugment.policy=translation,cutout (repeatable).",
        kind="named_pairs",
        flag="--augment-opt",
        metavar="NAME.KEY=V",
        must="a table per augmentation ([augment_options.NAME])",
    )
    augment_p: float | str = knob(
        1.0,
        help="Probability of applying each augmentation transform to each sample: a number in [0, 1], or auto "
        "(ADA: adapted so that r_t = E[sign D(real)] tracks --augment-target; for a loss without a fixed decision "
        "boundary, wasserstein or relativistic, the signs are taken about the midpoint of the mean real and fake score)",
        metavar="P|auto",
        parse=parse_augment_p,
        check=lambda v: v == AUGMENT_AUTO or (_is_number(v) and 0 <= v <= 1),
        must='a probability in [0, 1] or "auto"',
        example="0.3 or --augment-p auto",
    )
    augment_target: float = knob(
        0.6,
        help="--augment-p auto: the r_t that p is moved to keep",
        kind=float,
        check=lambda v: _is_number(v) and -1 < v < 1,
        must="a number in (-1, 1)",
        example=0.6,
    )
    augment_interval: int = knob(
        4, help="--augment-p auto: critic updates between moves of p", kind=int, low=1, example=4
    )
    augment_ramp: int = knob(
        100000, help="--augment-p auto: real images over which p can move from 0 to 1", kind=int, low=1, example=100000
    )

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict (a TOML file, a checkpoint); unknown keys raise ``KeyError``."""
        unknown = sorted(set(data) - set(KNOBS))
        if unknown:
            raise KeyError(", ".join(unknown))
        values = dict(data)
        if values.get("betas") is not None:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def _as_dict(config: TrainConfig | ResolvedConfig) -> dict[str, Any]:
    """``config``'s fields as plain data (betas a list), in field order: what config.toml and checkpoints hold."""
    data = dataclasses.asdict(config)
    if data["betas"] is not None:
        data["betas"] = list(data["betas"])
    return data


def _filled(name: str, meta: Knob, default: Any) -> Knob:
    """``meta`` with its flag, check, error text and example made where not given, its help ended by what the
    default is (``[default: the dataset's, else 2000].``, see :class:`Knob`)."""
    flag = meta.flag or "--" + name.replace("_", "-")
    help = meta.help
    if help and not help.endswith("."):
        shown = meta.default_text or (f"the dataset's, else {meta.base}" if meta.base is not None else default)
        help += f" [default: {shown}]."
    check, must, example, low = meta.check, meta.must, meta.example, meta.low
    if meta.kind is bool:
        check, must = (lambda value: isinstance(value, bool)), "true or false"
    elif meta.choices:
        check, must, example = meta.choices.__contains__, " or ".join(meta.choices), example or meta.choices[0]
    elif meta.kind == "pairs":
        check, must = (lambda value: isinstance(value, dict)), "a table of options"
    elif meta.kind == "named_pairs":
        check = _is_tables
    elif meta.kind == "names":
        check = lambda value: isinstance(value, (list, tuple)) and all(_is_name(item) for item in value)  # noqa: E731
    elif meta.kind is int:
        check = lambda value: _is_int(value) and (low is None or value >= low)  # noqa: E731
        must = "an integer" + ("" if low is None else f" >= {low}") + (f" ({meta.note})" if meta.note else "")
    return dataclasses.replace(meta, help=help, flag=flag, check=check, must=must, example=example)


_FIELDS = dataclasses.fields(TrainConfig)
# field name -> its Knob (flag, help, check and error text filled in), in field order
KNOBS: Mapping[str, Knob] = {f.name: _filled(f.name, f.metadata["knob"], f.default) for f in _FIELDS}
_DEFAULTS = {f.name: f.default for f in _FIELDS}  # MISSING for list and dict fields


@dataclass(frozen=True)
class ResolvedConfig:
    """A run's configuration, every layer applied and checked (:func:`resolve`, or read back from a run:
    :meth:`from_stored`): what the trainer, config.toml and checkpoints hold. The fields of :class:`TrainConfig`,
    none unset except latent_dim until the data's shape decides it (a built run's config holds the number)."""

    arch: str
    loss: str
    dataset: str
    arch_options: dict[str, Any]
    loss_options: dict[str, Any]
    data_options: dict[str, Any]
    steps: int
    batch_size: int
    n_critic: int
    pack: int
    conditional: bool
    optimizer: str
    lr_g: float
    lr_d: float
    betas: tuple[float, float]
    lr_decay: str
    latent_dim: int | None
    latent: str
    ema: float
    amp: bool
    cuda_graphs: bool
    device: str
    threads: int
    seed: int
    sample_every: int
    checkpoint_every: int
    log_every: int
    eval_every: int
    num_samples: int
    on_nan: str
    loggers: list[str]
    logger_options: dict[str, dict[str, Any]]
    augment: list[str]
    augment_options: dict[str, dict[str, Any]]
    augment_p: float | str
    augment_target: float
    augment_interval: int
    augment_ramp: int

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    def as_input(self) -> TrainConfig:
        """The same values as a :class:`TrainConfig` (a copy), to layer changes on."""
        return TrainConfig.from_dict(self.to_dict())

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> ResolvedConfig:
        """The config a run wrote (its checkpoints', its config.toml), as written: a knob its version did not have
        yet takes its base value, else its default (what that run used). KeyError for an unknown key."""
        values = TrainConfig.from_dict(dict(data)).to_dict()
        for name in KNOBS.keys() - data.keys():
            values[name] = values[name] if KNOBS[name].base is None else KNOBS[name].base
        return cls(**{**values, "betas": tuple(values["betas"])})


# What a resume may change: how long, how often and where to report, where and how fast to run, and the
# options that only say where the data lives. Everything else shapes the run.
RESUMABLE = frozenset(
    "steps amp cuda_graphs device threads sample_every checkpoint_every log_every eval_every num_samples on_nan "
    "loggers logger_options data_options.root data_options.download".split()
)


def check_knob(name: str, value: Any) -> None:
    """One-line :class:`UsageError` ("NAME must be ..., got VALUE: pass e.g. FLAG EXAMPLE") unless ``value`` suits
    knob ``name``; ``None`` passes where the field's default is ``None`` (unset)."""
    meta = KNOBS[name]
    if value is None and _DEFAULTS[name] is None:
        return
    try:
        ok = meta.check is None or bool(meta.check(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        hint = "" if meta.example is None else f": pass {'' if meta.choices else 'e.g. '}{meta.flag} {meta.example}"
        raise UsageError(f"{name} must be {meta.must}, got {value!r}{hint}")


def validate_config(config: TrainConfig | ResolvedConfig) -> None:
    """One-line :class:`UsageError` for any out-of-range knob; unset (``None``) knobs are skipped."""
    for name in KNOBS:
        check_knob(name, getattr(config, name))
    c = config
    if c.batch_size is not None and c.pack is not None and c.batch_size % c.pack:
        raise UsageError(
            f"--pack {c.pack} needs a --batch-size divisible by {c.pack}, got {c.batch_size}: change --batch-size, "
            "or pass --pack 1"
        )


# -- reading and resolving ----------------------------------------------------------------------


def _unknown_key(key: str) -> str:
    """``'stesp' (did you mean 'steps'?)``: an unknown config-file key and the nearest knob, or the option table
    where a command line shorthand's option goes."""
    if key in SHORTHANDS:
        table, option, _ = SHORTHANDS[key]
        return f"{key!r} (it is an option: put {option} in the [{table}] table)"
    close = difflib.get_close_matches(key.replace("-", "_"), list(KNOBS), n=1, cutoff=0.6)
    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def config_from_dict(data: Mapping[str, Any], source: str) -> TrainConfig:
    """A :class:`TrainConfig` of a config file's table; a one-line UsageError naming ``source`` (the file) for an
    unknown key (with the nearest knob) or a wrong value."""
    unknown = [key for key in data if key not in KNOBS]
    if unknown:
        what = "key" if len(unknown) == 1 else "keys"
        raise UsageError(f"{source}: unknown {what} {', '.join(_unknown_key(str(key)) for key in unknown)}")
    for name, value in data.items():
        try:
            check_knob(name, value)
        except UsageError as error:
            raise UsageError(f"{source}: {error}") from None
    return TrainConfig.from_dict(dict(data))


def read_toml(path: str, flag: str = "--config") -> dict[str, Any]:
    """The table of TOML file ``path``; UsageError naming ``flag`` when it is missing or no TOML."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{flag}: no file {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{flag} {path}: not valid TOML ({error})") from None


def read_config_file(path: str) -> TrainConfig:
    """``--config FILE.toml`` as a :class:`TrainConfig` (what it leaves out stays unset)."""
    return config_from_dict(read_toml(path), path)


# The fields a lower layer fills where a config leaves them None (latent_dim: the data's shape).
LAYERED = tuple(name for name, default in _DEFAULTS.items() if default is None)
IMAGE_LATENT_DIM = 64  # the size of z of a run on 3-D (image) data, unless set
VECTOR_LATENT_DIM = 8  # the size of z of a run on any other data, unless set


def resolve_specs(
    config: TrainConfig | ResolvedConfig, registry: Registry | None = None, provenance: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``{option table: spec}`` of ``config``'s arch, loss and dataset (UsageError if unknown): the specs a run
    recorded in ``provenance`` (the same plugins', whatever answers to the names now), else the registry's."""
    registry = registry or get_registry()
    recorded = provenance or {}
    return {
        table: registry.resolve_recorded(kind, getattr(config, SPEC_NAME[table]), recorded.get(kind))
        for table, kind in SPEC_KIND.items()
    }


def as_template(config: TrainConfig, names: Mapping[str, Any], registry: Registry | None = None) -> TrainConfig:
    """A config file's ``config`` under a command line that names another architecture, loss or dataset (``names``:
    the ``arch``, ``loss`` and ``dataset`` given, None where not given).

    The option table of each replaced spec (an alias of the same spec replaces nothing) is dropped, and so is every
    value equal to what the file's own names give by default, so the new names' defaults apply; values the user set
    are kept. A spec not installed here loses only its table. ``config`` itself when nothing is replaced, so
    ``--config RUN/config.toml`` alone repeats a run.
    """
    changed = {attr: name for attr, name in names.items() if name is not None and name != getattr(config, attr)}
    if not changed:
        return config
    registry = registry or get_registry()
    values: dict[str, Any] = {table: {} for table in SPEC_KIND if SPEC_NAME[table] in changed}
    try:
        old = resolve_specs(config, registry)
    except UsageError:  # a spec not installed here: its defaults are unknown
        return dataclasses.replace(config, **values)
    replaced = [
        table for table in values if registry.resolve(SPEC_KIND[table], changed[SPEC_NAME[table]]) is not old[table]
    ]
    if not replaced:
        return config
    bare = _layered(TrainConfig(arch=config.arch, loss=config.loss, dataset=config.dataset), old)
    values = {}
    for name in LAYERED:
        value = getattr(config, name)
        defaults = (
            (IMAGE_LATENT_DIM, VECTOR_LATENT_DIM) if name == "latent_dim" and bare[name] is None else (bare[name],)
        )
        if value is not None and (tuple(value) if name == "betas" else value) in defaults:
            values[name] = None
    for table, spec in old.items():
        given = getattr(config, table)
        resolved = {} if table in replaced else spec.resolve_options(given)
        keys = {str(key).replace("-", "_") for key in given}
        values[table] = {key: value for key, value in resolved.items() if key in keys and value != bare[table][key]}
    return dataclasses.replace(config, **values)


def _layered(config: TrainConfig, specs: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of a :class:`ResolvedConfig`: ``config``'s values over the lower layers, its option tables
    resolved against ``specs`` (:func:`resolve_specs`). latent_dim stays None unless set."""
    values = {name: getattr(config, name) for name in KNOBS}
    loss_name = specs["loss_options"].name
    dataset_defaults = dict(specs["data_options"].defaults)
    recipe = dict(dataset_defaults.pop("loss_recipes", {}).get(loss_name, {}))
    arch = specs["arch_options"].name
    arch_defaults = dict(dataset_defaults.pop("arch_options", {}).get(arch, {}))
    data_defaults = dict(dataset_defaults.pop("data_options", {}).get(arch, {}))
    arch_recipe = specs["arch_options"].recipes.get(loss_name)
    if arch_recipe is not None:
        recipe = {**dataclasses.asdict(arch_recipe.recipe), **recipe}
    for name, setting in {**dataset_defaults, **recipe}.items():
        if values[name] is None:
            values[name] = setting
    for name, meta in KNOBS.items():
        if values[name] is None and meta.base is not None:
            values[name] = meta.base
    if values["latent"] is None:
        values["latent"] = specs["data_options"].latent
    options = {
        "arch_options": {**arch_defaults, **config.arch_options},
        "loss_options": {**(arch_recipe.loss_options if arch_recipe else {}), **config.loss_options},
        "data_options": {**data_defaults, **config.data_options},
    }
    for table, spec in specs.items():
        values[table] = spec.resolve_options(options[table])
    if any(values[name] is None for name in RECIPE_KEYS):
        loss_defaults = loss_recipe(specs["loss_options"], values["loss_options"])
        for name in RECIPE_KEYS:
            if values[name] is None:
                values[name] = getattr(loss_defaults, name)
    values.update(lr_g=float(values["lr_g"]), lr_d=float(values["lr_d"]), ema=float(values["ema"]))
    values.update(betas=tuple(float(b) for b in values["betas"]), loggers=list(values["loggers"]))
    values["augment"] = list(values["augment"])
    return values


def resolve(
    config: TrainConfig, registry: Registry | None = None, provenance: Mapping[str, Any] | None = None
) -> ResolvedConfig:
    """``config`` with every layer applied (the module docstring), checked before and after (one-line UsageError):
    the one resolution of a command. Option tables are resolved against the specs a run recorded in ``provenance``,
    else the ``registry``'s; latent_dim, unless set, stays None for the data's shape to decide.
    """
    registry = registry or get_registry()
    validate_config(config)
    values = _layered(config, resolve_specs(config, registry, provenance))
    for name in config.logger_options:
        if name not in config.loggers:
            raise UsageError(f"logger_options names {name!r}, which is no logger of this run: add --logger {name}")
    for name in config.loggers:
        registry.resolve("logger", name).resolve_options(config.logger_options.get(name, {}))
    values["augment_options"] = resolve_augment_options(config, augment_specs(config.augment, provenance, registry))
    resolved = ResolvedConfig(**values)
    validate_config(resolved)  # the lower layers' values too
    return resolved


# -- resuming --------------------------------------------------------------------------------------------------

# ganplug train's own options (ganplug.cli declares them), which command_line_values leaves out
_NOT_KNOBS = frozenset({"quiet", "resume", "out", "config_file", "nproc", "fork", "discard_newer"})
# click's parameter name or the field's -> the field
_PARAMS = {**{name: name for name in KNOBS}, **{meta.flag[2:].replace("-", "_"): name for name, meta in KNOBS.items()}}


def command_line_values(given: Mapping[str, Any]) -> dict[str, Any]:
    """``{field: value}`` of ``ganplug train``'s options ``given`` (click's parameter names or field names; None,
    empty repeatable options and the command's own options such as --out left out): --betas and --augment-p parsed,
    KEY=VALUE pairs and the shorthands (--image-size, ...) as entries of their option table (to merge:
    :func:`with_changes`). UsageError for a malformed value or an unknown name."""
    values: dict[str, Any] = {}
    for key, value in given.items():
        if value is None or key in _NOT_KNOBS or key in SHORTHANDS or (isinstance(value, tuple) and not value):
            continue
        if key not in _PARAMS:
            raise UsageError(f"unknown option {key!r} of ganplug train")
        name = _PARAMS[key]
        meta = KNOBS[name]
        if meta.kind == "pairs":
            pairs = value if isinstance(value, Mapping) else parse_pairs(meta.flag, value)
            value = {str(k).replace("-", "_"): v for k, v in pairs.items()}
        elif meta.kind == "named_pairs" and isinstance(value, Mapping):
            value = {k: dict(v) for k, v in value.items()}
        elif meta.kind == "named_pairs":
            value = parse_named_pairs(meta.flag, value)
        elif meta.kind == "names":
            value = list(value)
        elif meta.parse is not None and isinstance(value, str):
            value = meta.parse(value)
        values[name] = value
    for key, (table, option, _) in SHORTHANDS.items():
        if given.get(key) is not None:
            values.setdefault(table, {})[option] = given[key]
    return values


def with_changes(config: TrainConfig, changes: Mapping[str, Any]) -> TrainConfig:
    """``config`` with ``changes`` (``{field: value}``): the entries of an option table (arch, loss, data options)
    merged into its table, and an augmentation's into its, any other value replaced."""
    values: dict[str, Any] = {}
    for name, value in changes.items():
        kind, old = KNOBS[name].kind, getattr(config, name)
        if kind == "pairs":
            value = {**old, **value}
        elif kind == "named_pairs":
            value = {key: {**old.get(key, {}), **value.get(key, {})} for key in {**old, **value}}
        values[name] = value
    return dataclasses.replace(config, **values)


def _entries(name: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """An option table as ``{key: value}``; the augmentations' as ``{"NAME.KEY": value}``."""
    if name == "augment_options":
        return {f"{aug}.{key}": value for aug, options in table.items() for key, value in options.items()}
    return dict(table)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _refuse(flag: str, old: Any, new: Any) -> None:
    raise UsageError(
        f"{flag} cannot change when resuming (the run has {old!r}, you asked for {new!r}): "
        "it shapes the run; start a new run with --out instead"
    )


def check_resume(stored: ResolvedConfig, values: Mapping[str, Any], given: Mapping[str, Any] | None = None) -> None:
    """UsageError naming the flag when ``values`` (``{field: value}``, e.g. a resolved config's) change anything of
    ``stored`` that :data:`RESUMABLE` does not list: it shapes the run. An option the stored run did not have yet
    (its spec gained it since) counts as a change only where ``given`` (the changes asked for) sets it."""
    for name, new in values.items():
        old = getattr(stored, name)
        if name not in SPEC_KIND and name != "augment_options":
            if name not in RESUMABLE and _plain(old) != _plain(new):
                _refuse(KNOBS[name].flag, old, new)
            continue
        was, now, asked = (_entries(name, table) for table in (old, new, (given or {}).get(name, {})))
        for key, value in now.items():
            if f"{name}.{key}" in RESUMABLE or (key not in was and key not in asked):
                continue
            if _plain(was.get(key)) != _plain(value):  # --image-size, --arch-opt width, --augment-opt NAME.KEY
                shorthand = [flag for table, option, flag in SHORTHANDS.values() if (table, option) == (name, key)]
                _refuse(shorthand[0] if shorthand else f"{KNOBS[name].flag} {key}", was.get(key), value)


def resolve_resume(
    stored: ResolvedConfig,
    changes: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
) -> ResolvedConfig:
    """A resume's config: :func:`resolve` applied to ``stored`` with ``changes`` (``{field: value}``, merged as by
    :func:`with_changes`), against the specs the run recorded in ``provenance``. UsageError (:func:`check_resume`)
    for a change :data:`RESUMABLE` does not list; another name of the recorded arch, loss or dataset (an alias,
    ``ganplug:bce``) is no change."""
    registry = registry or get_registry()
    recorded = resolve_specs(stored, registry, provenance)
    given = dict(changes)
    for table, name in SPEC_NAME.items():
        if name in given and given[name] != getattr(stored, name):
            try:
                if registry.resolve(SPEC_KIND[table], given[name]) is recorded[table]:
                    del given[name]
            except UsageError:
                pass  # an unknown name: a change, refused below
    plain = {name: value for name, value in given.items() if KNOBS[name].kind not in ("pairs", "named_pairs")}
    check_resume(
        stored, {name: float(v) if KNOBS[name].kind is float and _is_int(v) else v for name, v in plain.items()}
    )
    resolved = resolve(with_changes(stored.as_input(), given), registry, provenance)
    check_resume(stored, {name: getattr(resolved, name) for name in KNOBS}, given)
    return resolved


def augment_provenance_key(index: int) -> str:
    """The key of the ``index``-th augmentation (0-based) in a run's provenance: ``augmentation``,
    ``augmentation 2``, ..."""
    return "augmentation" if index == 0 else f"augmentation {index + 1}"


def augment_specs(
    names: list[str], provenance: Mapping[str, Any] | None = None, registry: Registry | None = None
) -> list[Any]:
    """The specs of augmentations ``names``: those a run recorded in ``provenance``, else the registry's."""
    registry = registry or get_registry()
    recorded = provenance or {}
    return [
        registry.resolve_recorded("augmentation", name, recorded.get(augment_provenance_key(i)))
        for i, name in enumerate(names)
    ]


def resolve_augment_options(config: TrainConfig, specs: list[Any]) -> dict[str, dict[str, Any]]:
    """``{name: every option}`` of each augmentation of ``config.augment`` (``specs``: their specs). UsageError for a
    name given twice, options of an augmentation the run does not use, or an ``augment_p`` other than 1 without one."""
    names = list(config.augment)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"--augment names {', '.join(twice)} more than once: give each augmentation once")
    for name in config.augment_options:
        if name not in names:
            raise UsageError(
                f"augment_options names {name!r}, which is no augmentation of this run: add --augment {name}"
            )
    if not names and config.augment_p != 1.0:
        raise UsageError(
            f"--augment-p {config.augment_p} applies to an augmented run: add --augment NAME (e.g. diffaugment)"
        )
    return {name: spec.resolve_options(config.augment_options.get(name, {})) for name, spec in zip(names, specs)}
