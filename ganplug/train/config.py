"""The run configuration: every knob of ``ganplug train``, torch-free so the CLI stays fast.

Each :class:`TrainConfig` field carries a :class:`Knob` (its flag, help, check, whether a resume
may change it), from which the command line's options (:mod:`ganplug.cli`), the validation
(:func:`validate_config`) and the resume rules (:mod:`ganplug.train.checkpoint`) are made: a new
knob is one field here. :func:`resolve` applies the layers once, lowest first:

1. the base defaults (a field's default, or its knob's ``base`` where a dataset may set it);
2. the loss's recipe (n_critic, optimiser, learning rates, betas; applied when the loss is built,
   :func:`ganplug.train.build.build_run`, to what is still ``None`` after this);
3. the dataset's ``defaults``: its training knobs, its ``arch_options`` for the chosen
   architecture, its ``loss_recipes`` entry for the chosen loss;
4. a config file (``--config FILE.toml``), 5. the command line, or the values given in Python.

``None`` means "not set here; take it from a lower layer". The command line, a config file and
``ganplug.train.train(TrainConfig(...))`` all go through :func:`resolve`, so the same names train
the same run and write the same config.toml.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ganplug.errors import UsageError
from ganplug.plugin import LATENTS

OPTIMIZERS = ("adam", "rmsprop")
LR_DECAYS = ("none", "linear")
ON_NAN = ("stop", "skip")


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
    """``("width=32", "critic-norm = layer")`` -> ``{"width": "32", "critic_norm": "layer"}``
    (``--arch-opt`` and friends); UsageError naming ``flag`` for a pair without ``KEY=``."""
    options: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got {pair!r}")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


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


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda value: _is_int(value) and value >= low


def _is_betas(value: Any) -> bool:
    betas = tuple(value)
    return len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)


@dataclass(frozen=True)
class Knob:
    """What one :class:`TrainConfig` field is to the command line, the validation and a resume.

    help: the flag's --help text; "" when the field has no flag of its own (a config file or
        Python sets it). Without a final period, `` [default: ...].`` is appended
        (:func:`default_text`).
    flag / param: the flag (``--`` + the field's name) and click's parameter name (the field's).
    kind: the flag's value: int, float, str, bool (an on-off flag), "pairs" (repeatable
        KEY=VALUE into the option table), "names" (repeatable).
    base: the base layer's value of a field a dataset's defaults may set (the field itself stays
        ``None`` until :func:`resolve`).
    check / error: a valid value passes ``check``; otherwise UsageError(``error`` formatted with
        ``value``). ``None`` passes where the field's default is ``None``.
    resumable: a resume may change it.
    """

    help: str = ""
    kind: Any = str
    flag: str | None = None
    param: str | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    bare: Any = None  # the value of the flag given without one (--ema)
    completes: str | None = None  # the plugin kind whose names complete the flag
    parse: Callable[[Any], Any] | None = None  # the flag's text -> the value (--betas)
    base: Any = None
    default_text: str | None = None
    check: Callable[[Any], bool] | None = None
    error: str = ""
    resumable: bool = False


def knob(default: Any = None, **meta: Any) -> Any:
    """A :class:`TrainConfig` field with its :class:`Knob`; a list or dict default is copied per config."""
    metadata = {"knob": Knob(**meta)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _name_knob(name: str, default: str, what: str, kind: str, table: str) -> Any:
    return knob(
        default, help=f"{what} [default: {default}]; see `ganplug list {kind}`.", completes=SPEC_KIND[table],
        check=_is_name, error=f'{name} must be a name, a string such as {name} = "{default}" (its options go in a '
        f"[{table}] table); got {{value!r}}",
    )


def _options_knob(name: str, flag: str, what: str) -> Any:
    return knob(
        {}, help=f"{what} option (repeatable).", kind="pairs", flag=flag, param=flag[2:].replace("-", "_"),
        metavar="KEY=VALUE", check=lambda value: isinstance(value, dict),
        error=f"{name} must be a table of options, got {{value!r}}",
    )


def _every_knob(name: str, default: int, what: str, low: int = 0, zero: str = "0 = only at the end", example: int = 500) -> Any:
    flag = "--" + name.replace("_", "-")
    zero_text = f" ({zero})" if low == 0 else ""
    return knob(
        default, help=f"Steps between {what}" + (f"; {zero}" if low == 0 else ""), kind=int, resumable=True,
        check=_int_at_least(low),
        error=f"{name} must be an integer >= {low}{zero_text}, got {{value!r}}: pass e.g. {flag} {example}",
    )


def _flag_knob(name: str, help: str, resumable: bool = False) -> Any:
    return knob(False, help=help, kind=bool, default_text="", resumable=resumable,
                check=lambda value: isinstance(value, bool), error=f"{name} must be true or false, got {{value!r}}")


CUDA_GRAPHS_HELP = (
    "Capture the whole step (critic updates with their penalties, generator update, optimiser steps) as one "
    "CUDA graph and replay it: fewer launches for small models. Runs the eager step instead, saying why in one "
    "line, on CPU, with --nproc > 1, with --lr-decay linear, with lazy R1/R2 (r1_every > 1), with a loss whose "
    "state changes every step or whose capture fails (it synchronises with the host), and if batch shapes "
    "change. Same maths; on a GPU equal to the eager step within float tolerance. Not yet run on a GPU; "
    "see docs/kernels.md."
)
LOSS_RECIPE = "the dataset's recipe for the loss, else the loss's"


@dataclass
class TrainConfig:
    arch: str = _name_knob("arch", "dcgan", "Architecture", "archs", "arch_options")
    loss: str = _name_knob("loss", "wasserstein", "Loss", "losses", "loss_options")
    dataset: str = _name_knob("dataset", "mnist5k", "Dataset", "datasets", "data_options")
    arch_options: dict[str, Any] = _options_knob("arch_options", "--arch-opt", "Architecture")
    loss_options: dict[str, Any] = _options_knob("loss_options", "--loss-opt", "Loss")
    data_options: dict[str, Any] = _options_knob("data_options", "--data-opt", "Dataset")
    steps: int | None = knob(
        help="Generator updates", kind=int, base=2000, resumable=True, check=_int_at_least(1),
        error="steps must be an integer >= 1, got {value!r}: pass e.g. --steps 2000",
    )
    batch_size: int | None = knob(
        help="Samples per batch", kind=int, base=64, check=_int_at_least(1),
        error="batch_size must be an integer >= 1, got {value!r}: pass e.g. --batch-size 64",
    )
    n_critic: int | None = knob(  # critic updates per generator update
        help="Critic updates per generator update", kind=int, default_text=LOSS_RECIPE, check=_int_at_least(1),
        error="n_critic must be an integer >= 1, got {value!r}: pass e.g. --n-critic 5",
    )
    pack: int | None = knob(  # PacGAN: the discriminator judges this many samples at once; 1 = off
        help="PacGAN: the discriminator judges M samples at once (1 = off)", kind=int, metavar="M", base=1,
        check=_int_at_least(1), error="pack must be an integer >= 1 (1 = off), got {value!r}: pass e.g. --pack 2",
    )
    conditional: bool = _flag_knob(
        "conditional", "Class-conditional G and D on the dataset's labels (a projection discriminator); samples "
        "come one row per class.",
    )
    optimizer: str | None = knob(
        help="Optimiser of both networks", choices=OPTIMIZERS, default_text="the loss's",
        check=lambda value: value in OPTIMIZERS,
        error="optimizer must be adam or rmsprop, got {value!r}: pass --optimizer adam",
    )
    lr_g: float | None = knob(
        help="Generator learning rate", kind=float, default_text=LOSS_RECIPE, check=lambda v: _is_number(v) and v > 0,
        error="lr_g must be a number > 0, got {value!r}: pass e.g. --lr-g 2e-4",
    )
    lr_d: float | None = knob(
        help="Critic learning rate", kind=float, default_text=LOSS_RECIPE, check=lambda v: _is_number(v) and v > 0,
        error="lr_d must be a number > 0, got {value!r}: pass e.g. --lr-d 2e-4",
    )
    betas: tuple[float, float] | None = knob(  # Adam only
        help="Adam betas", metavar="B1,B2", parse=parse_betas, default_text="the loss's", check=_is_betas,
        error="betas must be two numbers in [0, 1), got {value!r}: pass e.g. --betas 0.5,0.999",
    )
    # Learning-rate schedule: "none", or "linear": at generator step t (0-based) both optimisers
    # use base_lr * (1 - t / steps), ``steps`` being this config's (``--resume --steps`` updates it).
    lr_decay: str | None = knob(
        help="Learning-rate schedule: none, or linear decay to 0 over --steps", choices=LR_DECAYS, base="none",
        check=lambda value: isinstance(value, str) and value in LR_DECAYS,
        error="lr_decay must be none or linear, got {value!r}: pass --lr-decay linear (or none)",
    )
    latent_dim: int | None = knob(  # resolved when the data's shape is known (ganplug.train.build)
        help="Size of z", kind=int, default_text="the dataset's, else 64 for images, 8 otherwise",
        check=_int_at_least(1), error="latent_dim must be an integer >= 1, got {value!r}: pass e.g. --latent-dim 64",
    )
    latent: str | None = knob(
        help="Distribution of z", choices=LATENTS, default_text="the dataset's", check=lambda value: value in LATENTS,
        error="latent must be normal or uniform, got {value!r}: pass --latent normal",
    )
    ema: float | None = knob(  # decay of the generator's exponential moving average; 0 = off
        help="Keep an EMA of G (decay, 0.999 when given bare); samples use it", kind=float, bare=0.999, base=0.0,
        default_text="the dataset's, else off", check=lambda v: _is_number(v) and 0 <= v < 1,
        error="ema must be a decay in [0, 1), got {value!r}: pass e.g. --ema 0.999 (0 = off)",
    )
    amp: bool = _flag_knob("amp", "bf16 autocast (CUDA only).", resumable=True)
    cuda_graphs: bool = _flag_knob("cuda_graphs", CUDA_GRAPHS_HELP, resumable=True)  # ganplug.train.graphs
    device: str = knob(
        "auto", help="auto, cpu, cuda or cuda:N", resumable=True, check=_is_name,
        error='device must be a name, a string such as device = "auto"; got {value!r}',
    )
    seed: int = knob(0, help="Seed of every random choice", kind=int, check=_is_int, error="seed must be an integer, got {value!r}")
    sample_every: int = _every_knob("sample_every", 250, "sample grids", zero="0 = end only")
    checkpoint_every: int = _every_knob("checkpoint_every", 500, "checkpoints", zero="0 = end only")
    log_every: int = _every_knob("log_every", 10, "metrics.jsonl lines", low=1, example=10)
    eval_every: int = _every_knob(
        "eval_every", 0, "evaluations of the metrics (as `ganplug eval`) logged to metrics.jsonl", zero="0 = off",
    )
    num_samples: int = knob(  # images in a sample grid (fixed noise); no flag
        64, resumable=True, check=_int_at_least(1), error="num_samples must be an integer >= 1, got {value!r}",
    )
    on_nan: str = knob(
        "stop", help="A non-finite loss or weight: stop the run (keeping the last good checkpoint) or skip the step",
        choices=ON_NAN, resumable=True, check=lambda value: value in ON_NAN,
        error="on_nan must be stop or skip, got {value!r}: pass --on-nan stop",
    )
    loggers: list[str] = knob(  # --logger NAME: each metrics line, picture, evaluation
        [], help="Also send metrics, evaluations and sample pictures to this logger (repeatable), e.g. tensorboard; "
        "see `ganplug list loggers`. metrics.jsonl is always written.", kind="names", flag="--logger",
        metavar="NAME", completes="logger", resumable=True,
        check=lambda value: isinstance(value, (list, tuple)) and all(_is_name(n) for n in value),
        error='loggers must be a list of names such as loggers = ["tensorboard"], got {value!r}',
    )
    logger_options: dict[str, dict[str, Any]] = knob(  # {logger name: {option: value}}
        {}, resumable=True, check=lambda value: isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()),
        error="logger_options must hold a table per logger ([logger_options.NAME]), got {value!r}",
    )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["betas"] is not None:
            data["betas"] = list(data["betas"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (a TOML file, a checkpoint); unknown keys raise ``KeyError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KeyError(", ".join(unknown))
        values = dict(data)
        if values.get("betas") is not None:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    @classmethod
    def from_resolved(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a resolved config a run wrote (a checkpoint's, a run's config.toml): a knob
        its version did not have yet takes its base value, which that run used."""
        missing = {name: meta.base for name, meta in KNOBS.items() if meta.base is not None and name not in data}
        return cls.from_dict({**data, **missing})


def _knobs() -> dict[str, Knob]:
    found = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata["knob"]
        flag = meta.flag or "--" + f.name.replace("_", "-")
        found[f.name] = dataclasses.replace(meta, flag=flag, param=meta.param or f.name)
    return found


KNOBS: Mapping[str, Knob] = _knobs()  # field name -> its Knob (flag and param filled in), in field order


def default_text(name: str) -> str:
    """What ``--help`` says a knob defaults to: ``the dataset's, else 2000``, ``250``, ...;
    "" for on-off flags."""
    meta = KNOBS[name]
    if meta.default_text is not None:
        return meta.default_text
    if meta.base is not None:
        return f"the dataset's, else {meta.base}"
    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
    return "" if default is None or default is dataclasses.MISSING else str(default)


RESUMABLE = frozenset(name for name, meta in KNOBS.items() if meta.resumable)


def validate_config(config: TrainConfig) -> None:
    """One-line :class:`UsageError` for any out-of-range knob; unset (``None``) knobs are skipped."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, meta in KNOBS.items():
        value = getattr(config, name)
        if value is None and defaults[name] is None:
            continue
        try:
            ok = meta.check is None or bool(meta.check(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UsageError(meta.error.format(value=value))
    c = config
    if c.batch_size is not None and c.pack is not None and c.batch_size % c.pack:
        raise UsageError(
            f"--pack {c.pack} needs a --batch-size divisible by {c.pack}, got {c.batch_size}: change --batch-size, "
            "or pass --pack 1"
        )


# -- reading and resolving ----------------------------------------------------------------------


def config_from_dict(data: Mapping[str, Any], source: str) -> TrainConfig:
    """A :class:`TrainConfig` of a config file's table; UsageError naming ``source`` for an
    unknown key or a wrong value."""
    try:
        config = TrainConfig.from_dict(dict(data))
    except KeyError as error:
        raise UsageError(f"{source}: unknown keys {error.args[0]}") from None
    except TypeError as error:
        raise UsageError(f"{source}: {error}") from None
    return config


def read_toml(path: str, flag: str = "--config") -> dict[str, Any]:
    """The table of TOML file ``path``; UsageError naming ``flag`` when it is missing or no TOML."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{flag}: no file {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{flag} {path}: not valid TOML ({error})") from None


def read_config_file(path: str) -> TrainConfig:
    """``--config FILE.toml`` as a :class:`TrainConfig` (what it leaves out stays unset)."""
    return config_from_dict(read_toml(path), f"--config {path}")


def resolve(config: TrainConfig, registry: Any = None, specs: tuple[Any, Any, Any] | None = None) -> TrainConfig:
    """``config`` with the dataset's defaults and the base defaults in what it leaves unset, and its
    option tables resolved against the specs (every option, checked); a new config, validated.

    What stays ``None``: the fields the loss's recipe fills (n_critic, optimizer, lr_g, lr_d, betas)
    and latent_dim, resolved when the loss and the dataset are built
    (:func:`ganplug.train.build.build_run`). Resolving a resolved config changes nothing.
    ``specs``: the (architecture, loss, dataset) specs its names stand for, e.g. those a resumed
    run recorded; by default the ``registry``'s (the installed plugins').
    """
    if registry is None:
        from ganplug.registry import get_registry

        registry = get_registry()
    validate_config(config)
    if specs is None:
        specs = tuple(registry.resolve(kind, getattr(config, SPEC_NAME[table])) for table, kind in SPEC_KIND.items())
    specs = dict(zip(SPEC_KIND, specs))
    values: dict[str, Any] = {}
    dataset_defaults = dict(specs["data_options"].defaults)
    loss_recipe = dict(dataset_defaults.pop("loss_recipes", {}).get(specs["loss_options"].name, {}))
    arch_defaults = dict(dataset_defaults.pop("arch_options", {}).get(specs["arch_options"].name, {}))
    for name, setting in {**dataset_defaults, **loss_recipe}.items():
        if getattr(config, name) is None:
            values[name] = tuple(setting) if name == "betas" else setting
    for name, meta in KNOBS.items():
        if meta.base is not None and getattr(config, name) is None and name not in values:
            values[name] = meta.base
    if config.latent is None and "latent" not in values:
        values["latent"] = specs["data_options"].latent
    options = {"arch_options": {**arch_defaults, **config.arch_options}, "loss_options": config.loss_options,
               "data_options": config.data_options}
    for table, spec in specs.items():
        values[table] = spec.resolve_options(options[table])
    for name in config.logger_options:
        if name not in config.loggers:
            raise UsageError(f"logger_options names {name!r}, which is no logger of this run: add --logger {name}")
    for name in config.loggers:
        registry.resolve("logger", name).resolve_options(config.logger_options.get(name, {}))
    resolved = dataclasses.replace(config, **values)
    validate_config(resolved)  # the dataset's values too
    return resolved
