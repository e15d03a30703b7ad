"""Running sums of a step's losses and stats: 0-d tensors on the device, read back once."""

from __future__ import annotations

from typing import Any

import torch

from ganplug.train.distributed import World, all_reduce_sum


class Sums:
    """Running sums of 0-d tensors on the device (no host read until :meth:`means`)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: Any, count: int = 1) -> None:
        """Add ``value`` (the sum of ``count`` values; a tensor's mean, or a number) under ``key``."""
        value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        value = value.mean() if value.dim() else value
        self.sums[key] = self.sums[key] + value.to(self.sums[key].device) if key in self.sums else value
        self.counts[key] = self.counts.get(key, 0) + count

    def add_all(self, stats: dict[str, Any] | None, prefix: str = "") -> None:
        for key, value in (stats or {}).items():
            self.add(prefix + key, value)

    def merge(self, other: Sums) -> None:
        """Add ``other``'s sums and counts into these, and clear ``other``."""
        for key, value in other.sums.items():
            self.add(key, value, other.counts[key])
        other.clear()

    def means(self, world: World | None = None) -> dict[str, float]:
        """The means; with ``world``, averaged over the ranks too (every rank must call it)."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        device = self.sums[keys[0]].device
        stacked = torch.stack([self.sums[k].to(device) for k in keys])
        ranks = 1
        if world is not None:  # every rank has the same keys and counts
            stacked, ranks = all_reduce_sum(world, stacked), world.world_size
        values = stacked.tolist()  # one host read
        return {k: v / (self.counts[k] * ranks) for k, v in zip(keys, values)}

    def clear(self) -> None:
        self.sums.clear()
        self.counts.clear()
