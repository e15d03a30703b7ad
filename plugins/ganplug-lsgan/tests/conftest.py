"""Run the plugin's tests straight from a checkout: when ganplug_lsgan is not installed, import it
from ../src (an installed copy, e.g. `pip install ./plugins/ganplug-lsgan`, wins)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

if importlib.util.find_spec("ganplug_lsgan") is None:
    sys.path.insert(0, str(SRC))
