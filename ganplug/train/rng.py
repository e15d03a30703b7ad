"""The global RNG snapshot a checkpoint, a rollback and every side task (evaluation, loggers) save
and restore: torch's CPU generator and, on a GPU, the device's CUDA generator."""

from __future__ import annotations

from typing import Any

import torch


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global CPU RNG state, and the CUDA one of ``device`` when it is a GPU."""
    cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Put back a state of :func:`rng_state`."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state(state["cuda"][0], device)
