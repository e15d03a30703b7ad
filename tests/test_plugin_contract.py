"""The plugin API as a contract (docs/plugins.md, "The plugin API as a contract"): a plugin written
in every form the API has had (every hook, every call signature), installed as a real
distribution, passes ``ganplug.testing`` and trains; an old form warns, naming the plugin. Then
the plugin faults that must end in one line naming the plugin, not an internal error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_main
from test_faults import TINY, install, use_plugins

import ganplug.plugin
from ganplug.metrics import current_form, score_generator, takes_labels, uses_old_form
from ganplug.plugin import API_VERSION, DataContext, MetricContext, MetricSpec, PluginAPIWarning

pytestmark = pytest.mark.usefixtures("one_thread")

ORIGIN = "plugin 'oldformspkg' (ganplug-oldforms 1.0)"
NEW_FORM = "write metric(samples, context) (ganplug plugin API 2;"

# Plugin API 1, as its documentation had it: specs built positionally, ganplug.losses.GANLoss,
# generator_loss(critic, fake), a duck-typed loss, datasets of plain tensors, metrics called as
# metric(samples, *, dataset, dataset_options) with and without labels, a five-method logger.
API1_PLUGIN = """
    from ganplug.plugin import (
        ArchitectureSpec, DatasetSpec, LoggerSpec, LossSpec, MetricSpec, Option, Recipe, hookimpl,
    )

    @hookimpl
    def ganplug_architectures():
        return [ArchitectureSpec("old-mlp", "a two-layer mlp", "oldformspkg:build", (Option("width", int, 16, "hidden width"),))]

    @hookimpl
    def ganplug_losses():
        return [
            LossSpec("old-ls", "least squares, generator_loss(critic, fake)", "oldformspkg:LeastSquares"),
            LossSpec("duck", "a loss that subclasses nothing, generator_loss(critic, fake, real)", "oldformspkg:Duck"),
        ]

    @hookimpl
    def ganplug_datasets():
        return [DatasetSpec("old-points", "2-D normal points as plain tensors", "oldformspkg:points",
                            (Option("scale", float, 2.0, "their std"),), (), None, "normal")]

    @hookimpl
    def ganplug_metrics():
        return [
            MetricSpec("energy", "energy distance to ring8", "oldformspkg:energy", (Option("n_samples", int, 256),),
                       datasets=("ring8",)),
            MetricSpec("labelled", "whether labels came", "oldformspkg:labelled", datasets=("ring8",)),
            MetricSpec("spread", "std over the data's scale", "oldformspkg:spread", datasets=("old-points",)),
        ]

    @hookimpl
    def ganplug_loggers():
        return [LoggerSpec("old-rows", "step,d_loss rows", "oldformspkg:rows")]


    def build(ctx, width=16):
        import math
        from torch import nn

        size = math.prod(ctx.data_shape)
        tail = [nn.Tanh()] if ctx.bounded else []
        generator = nn.Sequential(nn.Linear(ctx.latent_dim, width), nn.ReLU(), nn.Linear(width, size), *tail,
                                  nn.Unflatten(1, tuple(ctx.data_shape)))
        discriminator = nn.Sequential(nn.Flatten(), nn.Linear(size, width), nn.LeakyReLU(0.2), nn.Linear(width, 1),
                                      nn.Flatten(0))
        return generator, discriminator


    from ganplug.losses import GANLoss

    class LeastSquares(GANLoss):
        recipe = Recipe(n_critic=1, optimizer="adam", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999))

        def discriminator_loss(self, critic, real, fake):
            real_scores, fake_scores = critic(real), critic(fake)
            loss = 0.5 * ((real_scores - 1) ** 2).mean() + 0.5 * (fake_scores ** 2).mean()
            return loss, {"d_real": real_scores.detach().mean()}

        def generator_loss(self, critic, fake):
            return 0.5 * ((critic(fake) - 1) ** 2).mean(), {}


    class Duck:
        recipe = Recipe()
        penalises_critic_gradient = False

        def discriminator_loss(self, critic, real, fake):
            import torch
            return torch.relu(1 - critic(real)).mean() + torch.relu(1 + critic(fake)).mean(), {}

        def generator_loss(self, critic, fake, real):
            import torch
            return torch.nn.functional.softplus(critic(real) - critic(fake)).mean(), {"gap": (critic(real) - critic(fake)).detach().mean()}

        def after_critic_step(self, critic):
            pass


    def points(ctx, scale=2.0):
        import torch

        data = scale * torch.randn(256, 2, generator=torch.Generator().manual_seed(ctx.seed))

        class Points(torch.utils.data.Dataset):
            def __len__(self):
                return len(data)

            def __getitem__(self, index):
                return data[index]

        return Points()


    def energy_distance(x, y):
        import torch
        return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


    def energy(n_samples=256):
        def score(samples, *, dataset, dataset_options):
            from ganplug.data.synthetic import ring8
            from ganplug.plugin import DataContext

            reference = ring8(DataContext(seed=0), **dataset_options).tensors[0][:256]
            return {"energy": energy_distance(samples, reference)}
        return score


    def labelled():
        def score(samples, *, dataset, dataset_options, labels=None):
            if labels is None:
                return {"labelled": 0.0}
            return {"labelled": 1.0, "mean_label": float(labels.float().mean()), "first": float(samples[0, 0])}
        return score


    def spread():
        def score(samples, *, dataset, dataset_options):
            return {"std_ratio": float(samples.std()) / dataset_options["scale"]}
        return score


    class Rows:
        def __init__(self, run_dir):
            self.path = run_dir / "old-rows.csv"

        def start(self, config):
            self.start_step = config["start_step"]

        def log(self, step, values):
            with open(self.path, "a") as out:
                out.write(f"{step},{values['d_loss']!r}\\n")

        def images(self, step, path):
            pass

        def evaluation(self, step, results):
            with open(self.path, "a") as out:
                out.write(f"eval,{step},{'+'.join(sorted(results))}\\n")

        def close(self):
            pass


    def rows(run_dir):
        return Rows(run_dir)
"""

# The energy-distance metric's new-form twin: the same numbers from MetricContext.real().
ENERGY_TWIN = """
    import torch
    from ganplug.plugin import MetricSpec, Option, hookimpl

    @hookimpl
    def ganplug_metrics():
        return [MetricSpec("energy-new", "energy distance to ring8", "newformpkg:energy", (Option("n_samples", int, 256),),
                           datasets=("ring8",))]

    def energy(n_samples=256):
        def score(samples, context):
            reference = context.real().take(range(256))[0]
            x, y = samples, reference
            return {"energy": float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())}
        return score
"""


@pytest.fixture
def api1(tmp_path, monkeypatch):
    """The API 1 plugin and the new-form twin, installed; returns the API 1 plugin's module."""
    use_plugins(
        monkeypatch,
        install(tmp_path / "site", "ganplug-oldforms", "1.0", "oldformspkg", API1_PLUGIN),
        install(tmp_path / "site", "ganplug-newform", "1.0", "newformpkg", ENERGY_TWIN),
    )
    import oldformspkg

    return oldformspkg


def old_form_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, PluginAPIWarning)]


# -- the test kit ------------------------------------------------------------------------------


def test_a_plugin_of_api_1_passes_the_test_kit_with_a_warning_naming_it(api1):
    import ganplug.testing

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginAPIWarning)
        registers = ganplug.testing.check_plugin(api1)
    assert registers == {
        "architecture": ["old-mlp"],
        "loss": ["old-ls", "duck"],
        "dataset": ["old-points"],
        "metric": ["energy", "labelled", "spread"],
        "logger": ["old-rows"],
    }
    messages = old_form_warnings(caught)
    assert messages == [
        f"{ORIGIN}: metric {name!r} uses the old call form metric(samples, *, dataset, dataset_options); {NEW_FORM} "
        "the old form keeps working at least until API 4)"
        for name in ("energy", "labelled", "spread")
    ]
    where = next(w for w in caught if "'energy'" in str(w.message))
    assert (Path(where.filename).name, where.lineno) == (
        "__init__.py",
        API1_PLUGIN.count("\n", 0, API1_PLUGIN.index("def score(samples, *, dataset, dataset_options):")) + 1,
    )


def test_the_old_form_energy_metric_scores_as_its_new_form_twin(api1):
    import ganplug.testing
    from ganplug.registry import get_registry

    old, new = (get_registry().resolve("metric", name) for name in ("energy", "energy-new"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        real_old = ganplug.testing.check_metric(old)
        real_new = ganplug.testing.check_metric(new)
        shifted = torch.randn(256, 2, generator=torch.Generator().manual_seed(1)) * 0.01 + torch.tensor([10.0, 0.0])
        far_old = ganplug.testing.check_metric(old, samples=shifted, dataset_options={"std": 0.02})
        far_new = ganplug.testing.check_metric(new, samples=shifted, dataset_options={"std": 0.02})
    assert real_old == real_new and far_old == far_new
    assert abs(real_old["energy"]) < 1e-5  # the real samples are the reference
    assert 15.0 < far_old["energy"] < 20.0  # ~2 x the shift of 10 less the spreads of the ring
    assert len(old_form_warnings(caught)) == 2 and all("'energy'" in m for m in old_form_warnings(caught))


def test_the_warning_is_shown_once_per_metric_under_the_default_filters(api1):
    from ganplug.registry import get_registry

    spec = get_registry().resolve("metric", "spread")
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("default")  # Python's action for a FutureWarning
        for _ in range(3):
            current_form(spec, spec.load()())
    assert len(old_form_warnings(caught)) == 1


# -- training ----------------------------------------------------------------------------------


def test_a_plugin_of_api_1_trains_evaluates_and_logs(api1, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = [a for a in TINY if "widths" not in a and a != "--arch-opt"]
    args[args.index("mlp")] = "old-mlp"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginAPIWarning)
        code, _, err = run_main(
            capsys,
            "train",
            *args,
            "--loss",
            "old-ls",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--logger",
            "old-rows",
            "--out",
            str(run_dir),
        )
    assert code == 0, err
    assert sorted(old_form_warnings(caught)) == sorted(
        [
            *(
                f"{ORIGIN}: metric {name!r} uses the old call form metric(samples, *, dataset, dataset_options); {NEW_FORM} "
                "the old form keeps working at least until API 4)"
                for name in ("energy", "labelled")
            ),
            f"{ORIGIN}: loss 'old-ls' uses the old call form (a LossSpec without recipe: the loss is built to read it); "
            "write LossSpec(recipe=...) (ganplug plugin API 4; the old form keeps working at least until API 6)",
        ]
    )  # once each: the metrics are built once per run, the loss's recipe read once
    records = read_metrics(run_dir)
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for record in evals:
        assert set(record["eval"]) == {"modes", "energy", "energy-new", "labelled"}
        assert record["eval"]["energy"] == record["eval"]["energy-new"] and record["eval"]["energy"]["energy"] > 0
        assert record["eval"]["labelled"] == {"labelled": 0.0}
    rows = (run_dir / "old-rows.csv").read_text().splitlines()
    d_losses = {r["step"]: r["d_loss"] for r in records if "d_loss" in r}
    assert [row for row in rows if row.startswith("eval")] == [
        "eval,2,energy+energy-new+labelled+modes",
        "eval,4,energy+energy-new+labelled+modes",
    ]
    assert {int(s): float(v) for s, v in (row.split(",") for row in rows if not row.startswith("eval"))} == d_losses
    assert sorted(d_losses) == [1, 2, 3, 4]


def test_a_duck_typed_loss_with_the_real_batch_trains_on_a_dataset_of_plain_tensors(api1, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = [a for a in TINY if a not in ("ring8", "size=256")]
    args.remove("--dataset")
    args.remove("--data-opt")
    code, _, err = run_main(
        capsys, "train", *args, "--dataset", "old-points", "--loss", "duck", "--steps", "3", "--out", str(run_dir)
    )
    assert code == 0, err
    records = [r for r in read_metrics(run_dir) if "g_gap" in r]
    assert [r["step"] for r in records] == [1, 2, 3]  # the generator stat of generator_loss(critic, fake, real)


def test_a_cli_user_sees_the_warning_by_default(api1, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "train", *TINY, "--loss", "bce", "--steps", "1", "--out", str(run_dir))
    assert code == 0, err
    site = str(tmp_path / "site")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganplug",
            "eval",
            "--checkpoint",
            str(run_dir),
            "--metric",
            "energy",
            "--metric",
            "labelled",
            "--num-samples",
            "64",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    shown = [line for line in done.stderr.splitlines() if "PluginAPIWarning" in line]
    assert len(shown) == 2, done.stderr
    assert all(
        ORIGIN in line and "old call form metric(samples, *, dataset, dataset_options)" in line for line in shown
    )
    assert "energy" in done.stdout and "labelled" in done.stdout


def test_an_old_form_metric_gets_the_labels_of_a_conditional_run(api1):
    from ganplug.registry import get_registry

    spec = get_registry().resolve("metric", "labelled")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginAPIWarning)
        metric = current_form(spec, spec.load()())
    assert takes_labels(metric)

    class Shift(torch.nn.Module):
        def forward(self, z, y):
            return z[:, :2] * 0 + y[:, None].float()

    context = MetricContext("ring8")
    scores = score_generator(
        Shift(), [(spec, metric, 6)], latent_dim=2, latent="normal", context=context, num_classes=3
    )
    assert scores == {"labelled": {"labelled": 1.0, "mean_label": 1.0, "first": 0.0}}  # labels 0, 1, 2, 0, 1, 2


# -- telling the forms apart -------------------------------------------------------------------


def _new(samples, context): ...
def _new_labels(samples, context, *, labels=None): ...
def _old(samples, *, dataset, dataset_options): ...
def _old_positional_names(samples, dataset=None, dataset_options=None): ...
def _old_kwargs(samples, **given): ...
def _varargs(*args): ...


class _OldObject:
    def __call__(self, samples, *, dataset, dataset_options, labels=None): ...


@pytest.mark.parametrize(
    "metric, old",
    [
        (_new, False),
        (_new_labels, False),
        (_old, True),
        (_old_positional_names, True),
        (_old_kwargs, True),
        (_varargs, False),
        (_OldObject(), True),
        (len, False),
    ],
)
def test_the_call_form_is_read_from_the_signature(metric, old):
    assert uses_old_form(metric) is old


def test_an_adapted_metric_passes_the_context_as_the_old_keywords():
    seen = {}

    def old(samples, *, dataset, dataset_options):
        seen.update(samples=samples, dataset=dataset, dataset_options=dataset_options)
        return {"n": float(len(samples))}

    spec = MetricSpec("probe", "s", old)
    with pytest.warns(PluginAPIWarning, match=r"its plugin: metric 'probe' uses the old call form"):
        metric = current_form(spec, old)
    samples = torch.zeros(5, 2)
    assert metric(samples, MetricContext("ring8", {"std": 0.5})) == {"n": 5.0}
    assert seen == {"samples": samples, "dataset": "ring8", "dataset_options": {"std": 0.5}}
    assert current_form(spec, _new) is _new


# -- one module, versioned, torch-free ---------------------------------------------------------


def test_the_plugin_module_holds_every_public_type_and_stays_torch_free():
    code = (
        "import sys\n"
        "from ganplug.plugin import *\n"
        "from ganplug.plugin import __all__\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(len(__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import ganplug.losses

    assert ganplug.losses.GANLoss is ganplug.plugin.GANLoss
    assert ganplug.losses.Critic is ganplug.plugin.Critic
    expected = {
        "hookimpl",
        "ArchitectureSpec",
        "ArchRecipe",
        "LossSpec",
        "DatasetSpec",
        "MetricSpec",
        "LoggerSpec",
        "Option",
        "ModelContext",
        "DataContext",
        "MetricContext",
        "Recipe",
        "GANLoss",
        "Critic",
        "Metric",
        "Logger",
        "RealData",
        "GanplugError",
        "MetricUnavailable",
        "API_VERSION",
        "OLD_FORMS_KEPT",
        "PluginAPIWarning",
        "DEFAULT_METRIC_SAMPLES",
        "AugmentationSpec",
        "AugmentContext",
        "Augmentation",
    }
    assert set(ganplug.plugin.__all__) == expected
    assert int(done.stdout) == len(expected)


def test_the_docs_name_every_public_type_and_every_api_version():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    table = docs[docs.index("importable from one module, `ganplug.plugin`") : docs.index("Helpers that need torch")]
    missing = [name for name in ganplug.plugin.__all__ if f"`{name}`" not in table and name != "OLD_FORMS_KEPT"]
    assert not missing, f"docs/plugins.md's table of ganplug.plugin lacks {missing}"
    assert "`OLD_FORMS_KEPT` (2)" in docs and ganplug.plugin.OLD_FORMS_KEPT == 2
    assert isinstance(API_VERSION, int) and API_VERSION == 6
    rows = re.findall(r"^\| (\d+) \|", docs, flags=re.MULTILINE)
    assert [int(r) for r in rows] == list(range(1, API_VERSION + 1))


def test_old_import_paths_and_positional_specs_keep_working():
    from ganplug.losses import GANLoss, HingeLoss, Recipe  # noqa: F401 (Recipe came through ganplug.losses in API 1 code)
    from ganplug.plugin import ArchitectureSpec, DatasetSpec, LossSpec, ModelContext, Option

    spec = DatasetSpec("p", "s", "m:f", (Option("scale", float, 1.0),), ("alias",), None, "uniform")
    assert (spec.value_range, spec.latent, spec.aliases, spec.num_classes) == (None, "uniform", ("alias",), 0)
    assert ModelContext((2,), 4, False, False) == ModelContext(
        data_shape=(2,), latent_dim=4, bounded=False, critic_batchnorm=False, num_classes=0
    )
    assert DataContext(3).seed == 3
    arch = ArchitectureSpec("a", "s", "m:f", (Option("width", int, 8),), ("alias",), True)  # API 4's fields, in order
    assert (arch.conditional, arch.aliases, arch.recipes) == (True, ("alias",), {})  # API 5's recipes: none
    loss = LossSpec("l", "s", "m:f", (), ("alias",), HingeLoss.recipe)  # API 5's fields, in order
    assert (loss.recipe, loss.shift_invariant) == (HingeLoss.recipe, False)  # API 6's default: scores centred on 0


# -- plugin faults, each one line naming the plugin ---------------------------------------------

FAULTY = """
    import torch
    from ganplug.losses import HingeLoss
    from ganplug.plugin import DatasetSpec, LossSpec, hookimpl

    @hookimpl
    def ganplug_losses():
        return [LossSpec("dict-loss", "a factory returning a dict", "faultypkg:dict_loss"),
                LossSpec("none-loss", "generator_loss returns None", "faultypkg:NoneLoss")]

    @hookimpl
    def ganplug_datasets():
        return [DatasetSpec("ragged", "odd items have 3 coordinates", "faultypkg:ragged", value_range=None),
                DatasetSpec("ragged-images", "odd items are 4x5 images", "faultypkg:ragged_images")]

    def dict_loss():
        return {"discriminator_loss": None}

    class NoneLoss(HingeLoss):
        def generator_loss(self, critic, fake):
            critic(fake)

    class Ragged(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, index):
            return torch.full((3 if index % 2 else 2,), float(index))

    def ragged(ctx):
        return Ragged()

    class RaggedImages(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, index):
            return torch.zeros(1, 4, 5 if index % 2 else 4)

    def ragged_images(ctx):
        return RaggedImages()
"""
FAULTY_ORIGIN = "plugin 'faultypkg' (ganplug-faulty 0.2)"


@pytest.fixture
def faulty(tmp_path, monkeypatch):
    use_plugins(monkeypatch, install(tmp_path / "site", "ganplug-faulty", "0.2", "faultypkg", FAULTY))


def test_a_loss_factory_returning_a_dict_is_one_line_naming_the_plugin(faulty, tmp_path, capsys):
    code, _, err = run_main(capsys, "train", *TINY, "--loss", "dict-loss", "--steps", "2", "--out", str(tmp_path / "r"))
    assert code == 1
    assert err == (
        f"Error: loss 'dict-loss' of {FAULTY_ORIGIN}: its factory returned a dict without discriminator_loss(), "
        "generator_loss(), after_critic_step(), not a loss (subclass ganplug.plugin.GANLoss): report this to the "
        "plugin's author\n"
    )


def test_a_generator_loss_returning_none_is_one_line_naming_the_plugin(faulty, tmp_path, capsys):
    code, _, err = run_main(capsys, "train", *TINY, "--loss", "none-loss", "--steps", "2", "--out", str(tmp_path / "r"))
    assert code == 1
    assert err.splitlines()[-1].startswith(
        f"Error: step 1: loss 'none-loss' of {FAULTY_ORIGIN}: generator_loss() returned None, not (loss, stats), a "
        "tensor and a dict: report this to the plugin's author;"
    ), err
    assert "internal error" not in err


def test_a_dataset_of_ragged_items_is_one_line_naming_the_plugin(faulty, tmp_path, capsys):
    args = [a for a in TINY if a not in ("ring8", "size=256")]
    args.remove("--dataset")
    args.remove("--data-opt")
    code, _, err = run_main(capsys, "train", *args, "--dataset", "ragged", "--steps", "2", "--out", str(tmp_path / "r"))
    assert code == 1
    assert err == (
        f"Error: dataset 'ragged' of {FAULTY_ORIGIN}: item 1 has shape (3,) but item 0 has (2,): every sample needs "
        "one shape\n"
    )


def test_ragged_items_that_the_start_did_not_read_end_the_first_step_naming_the_plugin(
    faulty, tmp_path, capsys, monkeypatch
):
    import ganplug.train.build

    # As for a dataset whose odd item lies beyond the items a run reads before its first step.
    monkeypatch.setattr(ganplug.train.build, "check_sample_shapes", lambda dataset: None)
    args = [a for a in TINY if a not in ("ring8", "size=256")]
    args.remove("--dataset")
    args.remove("--data-opt")
    code, _, err = run_main(
        capsys, "train", *args, "--dataset", "ragged-images", "--steps", "2", "--out", str(tmp_path / "r")
    )
    assert code == 1
    assert re.match(
        rf"Error: step 1: dataset 'ragged-images' of {re.escape(FAULTY_ORIGIN)}: its items have samples of different "
        r"shapes, \(1, 4, (4|5)\) and \(1, 4, (5|4)\), in one batch: every sample needs one shape;",
        err.splitlines()[-1],
    ), err


def test_the_test_kit_catches_the_same_three_faults(faulty):
    import ganplug.testing
    from ganplug.registry import get_registry

    registry = get_registry()
    with pytest.raises(AssertionError, match=r"loss 'dict-loss': the factory returned a dict without"):
        ganplug.testing.check_loss(registry.resolve("loss", "dict-loss"))
    with pytest.raises(
        AssertionError, match=r"loss 'none-loss': generator_loss\(\) must return \(loss, stats\), got None"
    ):
        ganplug.testing.check_loss(registry.resolve("loss", "none-loss"))
    with pytest.raises(AssertionError, match=r"dataset 'ragged': item 9 has shape \(3,\) but item 0 has \(2,\)"):
        ganplug.testing.check_dataset(registry.resolve("dataset", "ragged"))
