"""The run configuration: every knob of ``ganplug train``, torch-free so the CLI stays fast.

Precedence, highest first: command-line options, ``--config FILE.toml``, the dataset's
``defaults`` (applied by the CLI; its ``loss_recipes`` entry for the chosen loss included), the
loss's recipe (n_critic, optimiser, learning rates, betas), the dataset's latent default, then the
defaults below. ``None`` means "not set here; take it from the next layer".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

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
# ``--arch-opt KEY=VALUE`` and friends: parameter name -> config attribute.
OPTION_FLAGS = {"arch_opt": "arch_options", "loss_opt": "loss_options", "data_opt": "data_options"}
# Config attribute -> the kind of spec its options belong to.
SPEC_KIND = {"arch_options": "architecture", "loss_options": "loss", "data_options": "dataset"}


@dataclass
class TrainConfig:
    arch: str = "dcgan"
    loss: str = "wasserstein"
    dataset: str = "mnist5k"
    arch_options: dict[str, Any] = field(default_factory=dict)
    loss_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000  # generator updates
    batch_size: int = 64
    n_critic: int | None = None  # critic updates per generator update
    pack: int = 1  # PacGAN: the discriminator judges this many samples at once; 1 = off
    conditional: bool = False  # class-conditional G and D on the dataset's labels
    optimizer: str | None = None  # "adam" or "rmsprop"
    lr_g: float | None = None
    lr_d: float | None = None
    betas: tuple[float, float] | None = None  # Adam only
    # Learning-rate schedule: "none", or "linear": at generator step t (0-based) both optimisers
    # use base_lr * (1 - t / steps), ``steps`` being this config's (``--resume --steps`` updates it).
    lr_decay: str = "none"
    latent_dim: int | None = None  # 64 for images, 8 for vector data
    latent: str | None = None  # "normal" or "uniform"; default from the dataset
    ema: float = 0.0  # decay of the generator's exponential moving average; 0 = off
    amp: bool = False  # bf16 autocast on CUDA
    cuda_graphs: bool = False  # capture the step as a CUDA graph and replay it (ganplug.train.graphs)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    sample_every: int = 250  # generator steps between sample grids; 0 = only at the end
    checkpoint_every: int = 500  # generator steps between checkpoints; 0 = only at the end
    log_every: int = 10  # generator steps between metrics.jsonl lines
    eval_every: int = 0  # generator steps between metric evaluations (metrics.jsonl); 0 = off
    num_samples: int = 64  # images in a sample grid (fixed noise)
    on_nan: str = "stop"  # a non-finite loss or weight: "stop" the run, or "skip" the step
    loggers: list[str] = field(default_factory=list)  # --logger NAME: each metrics line, picture, evaluation
    logger_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # {logger name: {option: value}}

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


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def validate_config(config: TrainConfig) -> None:
    """One-line :class:`UsageError` for any out-of-range knob; ``None`` fields are skipped."""
    c = config
    for name, table in (("arch", "arch_options"), ("loss", "loss_options"), ("dataset", "data_options"), ("device", None)):
        value = getattr(c, name)
        hint = f" (its options go in a [{table}] table)" if table else ""
        _require(
            isinstance(value, str) and value.strip() != "",
            f"{name} must be a name, a string such as {name} = \"{getattr(TrainConfig, name)}\"{hint}; got {value!r}",
        )
    _require(_is_int(c.steps) and c.steps >= 1, f"steps must be an integer >= 1, got {c.steps!r}: pass e.g. --steps 2000")
    _require(
        _is_int(c.batch_size) and c.batch_size >= 1,
        f"batch_size must be an integer >= 1, got {c.batch_size!r}: pass e.g. --batch-size 64",
    )
    _require(_is_int(c.pack) and c.pack >= 1, f"pack must be an integer >= 1 (1 = off), got {c.pack!r}: pass e.g. --pack 2")
    _require(c.batch_size % c.pack == 0, f"--pack {c.pack} needs a --batch-size divisible by {c.pack}, got {c.batch_size}: change --batch-size, or pass --pack 1")
    if c.n_critic is not None:
        _require(
            _is_int(c.n_critic) and c.n_critic >= 1,
            f"n_critic must be an integer >= 1, got {c.n_critic!r}: pass e.g. --n-critic 5",
        )
    if c.optimizer is not None:
        _require(c.optimizer in OPTIMIZERS, f"optimizer must be adam or rmsprop, got {c.optimizer!r}: pass --optimizer adam")
    for name in ("lr_g", "lr_d"):
        value = getattr(c, name)
        if value is not None:
            flag = "--" + name.replace("_", "-")
            _require(_is_number(value) and value > 0, f"{name} must be a number > 0, got {value!r}: pass e.g. {flag} 2e-4")
    _require(
        isinstance(c.lr_decay, str) and c.lr_decay in LR_DECAYS,
        f"lr_decay must be none or linear, got {c.lr_decay!r}: pass --lr-decay linear (or none)",
    )
    if c.betas is not None:
        betas = tuple(c.betas)
        _require(
            len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas),
            f"betas must be two numbers in [0, 1), got {c.betas!r}: pass e.g. --betas 0.5,0.999",
        )
    if c.latent_dim is not None:
        _require(
            _is_int(c.latent_dim) and c.latent_dim >= 1,
            f"latent_dim must be an integer >= 1, got {c.latent_dim!r}: pass e.g. --latent-dim 64",
        )
    if c.latent is not None:
        _require(c.latent in LATENTS, f"latent must be normal or uniform, got {c.latent!r}: pass --latent normal")
    _require(_is_number(c.ema) and 0 <= c.ema < 1, f"ema must be a decay in [0, 1), got {c.ema!r}: pass e.g. --ema 0.999 (0 = off)")
    _require(isinstance(c.amp, bool), f"amp must be true or false, got {c.amp!r}")
    _require(isinstance(c.cuda_graphs, bool), f"cuda_graphs must be true or false, got {c.cuda_graphs!r}")
    _require(isinstance(c.conditional, bool), f"conditional must be true or false, got {c.conditional!r}")
    _require(_is_int(c.seed), f"seed must be an integer, got {c.seed!r}")
    for name in ("sample_every", "checkpoint_every"):
        value = getattr(c, name)
        flag = "--" + name.replace("_", "-")
        _require(_is_int(value) and value >= 0, f"{name} must be an integer >= 0 (0 = only at the end), got {value!r}: pass e.g. {flag} 500")
    _require(_is_int(c.log_every) and c.log_every >= 1, f"log_every must be an integer >= 1, got {c.log_every!r}: pass e.g. --log-every 10")
    _require(
        _is_int(c.eval_every) and c.eval_every >= 0,
        f"eval_every must be an integer >= 0 (0 = off), got {c.eval_every!r}: pass e.g. --eval-every 500",
    )
    _require(
        _is_int(c.num_samples) and c.num_samples >= 1,
        f"num_samples must be an integer >= 1, got {c.num_samples!r}",
    )
    _require(c.on_nan in ON_NAN, f"on_nan must be stop or skip, got {c.on_nan!r}: pass --on-nan stop")
    for name in ("arch_options", "loss_options", "data_options"):
        _require(isinstance(getattr(c, name), dict), f"{name} must be a table of options, got {getattr(c, name)!r}")
    _require(
        isinstance(c.loggers, (list, tuple)) and all(isinstance(n, str) and n.strip() for n in c.loggers),
        f'loggers must be a list of names such as loggers = ["tensorboard"], got {c.loggers!r}',
    )
    _require(
        isinstance(c.logger_options, dict) and all(isinstance(v, dict) for v in c.logger_options.values()),
        f"logger_options must hold a table per logger ([logger_options.NAME]), got {c.logger_options!r}",
    )
