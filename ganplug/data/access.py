"""Reading a dataset's samples: where a tensor-backed dataset keeps them (the trainer's fast
path), and whole or by index as float tensors (what a metric compares generated samples with)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

from ganplug.errors import GanplugError


def whole_tensors(dataset: Dataset) -> tuple[torch.Tensor | None, Any, Callable[[torch.Tensor], torch.Tensor] | None]:
    """``(samples, labels, convert)`` of a dataset held as whole tensors, the fast path: a
    ``TensorDataset`` (its first tensor, its second or None, no conversion) or a
    :class:`ganplug.data.images.UInt8Images` (uint8 ``images``, ``labels``, ``to_float`` per batch);
    ``(None, None, None)`` for any other dataset (read item by item)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1] if len(dataset.tensors) > 1 else None, None
    if isinstance(getattr(dataset, "images", None), torch.Tensor) and callable(getattr(dataset, "to_float", None)):
        return dataset.images, getattr(dataset, "labels", None), dataset.to_float  # type: ignore[attr-defined]
    return None, None, None


def sample_of(item: Any) -> Any:
    """The sample in one dataset item: the item itself, or the first entry of a tuple/list."""
    return item[0] if isinstance(item, (tuple, list)) and len(item) > 0 else item


SHAPE_CHECKED_ITEMS = 64  # items a run reads before training to check that their samples share a shape


def check_sample_shapes(dataset: Dataset, count: int = SHAPE_CHECKED_ITEMS) -> None:
    """Read ``count`` items spread evenly over an item-wise ``dataset`` (the first and the last
    among them; a dataset of whole tensors needs no check) and raise GanplugError naming two whose
    samples differ in shape."""
    if whole_tensors(dataset)[0] is not None:
        return
    size = len(dataset)  # type: ignore[arg-type]
    n = min(count, size)
    indices = sorted({round(i * (size - 1) / max(n - 1, 1)) for i in range(n)})
    first = tuple(sample_of(dataset[indices[0]]).shape)
    for index in indices[1:]:
        shape = tuple(sample_of(dataset[index]).shape)
        if shape != first:
            raise GanplugError(
                f"item {index} has shape {shape} but item {indices[0]} has {first}: every sample needs one shape"
            )


def collate_items(items: list[Any]) -> Any:
    """``torch.utils.data.default_collate`` of a batch of dataset items, after checking that their
    samples are tensors of one shape: GanplugError naming two shapes that differ otherwise."""
    samples = [sample_of(item) for item in items]
    first = samples[0]
    if isinstance(first, torch.Tensor):
        odd = next((s for s in samples if isinstance(s, torch.Tensor) and s.shape != first.shape), None)
        if odd is not None:
            raise GanplugError(
                f"its items have samples of different shapes, {tuple(first.shape)} and {tuple(odd.shape)}, "
                "in one batch: every sample needs one shape"
            )
    return default_collate(items)


class RealSamples:
    """The samples of one dataset object, read whole or by index, as float32 tensors: what a
    metric compares generated samples with (see :class:`ganplug.plugin.MetricContext`)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._tensors = whole_tensors(dataset)
        self._all: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def take(self, indices: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(samples, labels)`` of the items ``indices`` (ints, in that order; None: every item,
        read once and kept): samples ``(n, *data_shape)`` float32, labels ``(n,)`` int64 or None
        when the items carry none."""
        if indices is None and self._all is not None:
            return self._all
        samples, labels, convert = self._tensors
        if samples is not None:
            if indices is not None:
                index = torch.as_tensor(indices, dtype=torch.long)
                samples, labels = samples[index], labels[index] if labels is not None else None
            samples = convert(samples) if convert is not None else samples
        else:
            order = range(len(self)) if indices is None else [int(i) for i in indices]
            items = [self.dataset[i] for i in order]
            if not items:
                raise GanplugError("no real samples to compare with: the dataset is empty")
            samples = torch.stack([torch.as_tensor(sample_of(item)) for item in items])
            if all(isinstance(item, (tuple, list)) and len(item) > 1 for item in items):
                labels = torch.as_tensor([int(item[1]) for item in items])
        found = samples.to(torch.float32), torch.as_tensor(labels).long() if labels is not None else None
        if indices is None:
            self._all = found
        return found
