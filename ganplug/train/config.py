"""The run configuration: every knob of ``ganplug train``, torch-free so the CLI stays fast.

Precedence, highest first: command-line options, ``--config FILE.toml``, the loss's recipe
(n_critic, optimiser, learning rates, betas), the dataset's latent default, then the defaults
below. ``None`` means "not set here; take it from the next layer".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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
    dataset: str = "digits"
    arch_options: dict[str, Any] = field(default_factory=dict)
    loss_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 2000  # generator updates
    batch_size: int = 64
    n_critic: int | None = None  # critic updates per generator update
    pack: int = 1  # PacGAN: the discriminator judges this many samples at once; 1 = off
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
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    sample_every: int = 250  # generator steps between sample grids; 0 = only at the end
    checkpoint_every: int = 500  # generator steps between checkpoints; 0 = only at the end
    log_every: int = 10  # generator steps between metrics.jsonl lines
    eval_every: int = 0  # generator steps between metric evaluations (metrics.jsonl); 0 = off
    num_samples: int = 64  # images in a sample grid (fixed noise)
    on_nan: str = "stop"  # a non-finite loss or weight: "stop" the run, or "skip" the step

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
