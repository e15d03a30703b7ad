"""The hooks ganplug calls. Specs only: factories are ``"module:function"`` strings, so this
module never imports torch and ``ganplug plugins`` / ``ganplug list`` stay fast."""

from __future__ import annotations

from ganplug.plugin import DatasetSpec, LoggerSpec, LossSpec, Option, Recipe, hookimpl

# The training defaults of the least-squares loss (the paper's DCGAN setting).
LSGAN_RECIPE = Recipe(n_critic=1, optimizer="adam", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999))


@hookimpl
def ganplug_losses() -> list[LossSpec]:
    return [
        LossSpec(
            name="least-squares",
            summary="least-squares GAN: D regresses real to b and fake to a, G pulls D(G(z)) to c (Mao et al. 2017)",
            factory="ganplug_lsgan.loss:LeastSquaresLoss",
            recipe=LSGAN_RECIPE,
            options=(
                Option("a", float, 0.0, "D's target for generated samples"),
                Option("b", float, 1.0, "D's target for real samples"),
                Option("c", float, 1.0, "the value G wants D to output on its samples"),
            ),
            aliases=("lsgan",),
        ),
    ]


@hookimpl
def ganplug_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="swissroll",
            summary="2-D swiss roll spiral in about [-2, 2]^2 with Gaussian noise",
            factory="ganplug_lsgan.data:swissroll",
            options=(
                Option("noise", float, 0.25, "std of the Gaussian noise, in the roll's unscaled units"),
                Option("size", int, 65536, "number of samples drawn once, with the run's seed"),
            ),
            value_range=None,
        ),
    ]


@hookimpl
def ganplug_loggers() -> list[LoggerSpec]:
    return [
        LoggerSpec(
            name="csv",
            summary="the metrics lines as a CSV table in the run directory",
            factory="ganplug_lsgan.csvlog:csv_logger",
            options=(Option("filename", str, "metrics.csv", "file name in the run directory"),),
        ),
    ]
