"""config.toml is written without tomli-w (ganplug.train.toml_writer): read back by tomllib, its
output gives the same dict as tomli-w's, for every shape a config holds."""

from __future__ import annotations

import math
import sys

import pytest

from ganplug.train import TrainConfig, config_toml
from ganplug.train.toml_writer import dumps

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

tomli_w = pytest.importorskip("tomli_w")

DATA = {
    "arch": "dcgan",
    "quote": 'a "b" \\ c\n\td\x01\x7f é',
    "flag": True,
    "off": False,
    "count": -3,
    "big": 10**15,
    "small": 1e-300,
    "huge": 1e16,
    "third": 1 / 3,
    "neg_zero": -0.0,
    "inf": math.inf,
    "ninf": -math.inf,
    "betas": [0.5, 0.999],
    "names": ["tensorboard", "x y"],
    "empty": [],
    "arch_options": {"width": 8, "critic_norm": "spectral", "g_widths": "16,16"},
    "loss_options": {},
    "logger_options": {"tensorboard": {"flush_secs": 5}, "my logger": {"a.b": [1, 2]}},
    "after": "plain values are written before the tables",
}


def test_it_reads_back_as_tomli_ws_output_does():
    mine = tomllib.loads(dumps(DATA))
    assert mine == tomllib.loads(tomli_w.dumps(DATA))
    assert (
        mine["quote"] == DATA["quote"]
        and mine["third"] == 1 / 3
        and mine["logger_options"]["my logger"] == {"a.b": [1, 2]}
    )
    assert mine["neg_zero"] == 0.0 and math.copysign(1, mine["neg_zero"]) == -1


def test_nan_reads_back_as_nan():
    assert math.isnan(tomllib.loads(dumps({"x": math.nan}))["x"])


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(),
        TrainConfig(
            arch="dcgan",
            loss="wasserstein",
            dataset="digits",
            arch_options={"width": 8},
            loss_options={"r1": 1.0},
            data_options={"image_size": 16},
            steps=20,
            betas=(0.0, 0.99),
            lr_g=2e-4,
            cuda_graphs=True,
            amp=True,
        ),
    ],
)
def test_a_configs_toml_reads_back_as_tomli_ws(config):
    text = config_toml(config, {"loss": {"name": "wasserstein", "plugin": "ganplug"}})
    assert text.startswith("# loss 'wasserstein': plugin 'ganplug'\n")
    data = {k: v for k, v in config.to_dict().items() if v is not None}
    assert tomllib.loads(text) == tomllib.loads(tomli_w.dumps(data))


def test_a_value_toml_cannot_hold_is_one_line_naming_it():
    with pytest.raises(
        TypeError, match=r"^config value arch_options.width is a complex, which config.toml cannot hold$"
    ):
        dumps({"arch_options": {"width": 1j}})
