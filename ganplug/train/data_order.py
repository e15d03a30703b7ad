"""An exactly resumable order of training batches.

Epoch ``e`` visits the dataset in a permutation seeded from ``(seed, e)`` (no global RNG);
batches are consecutive slices of it, the incomplete last one dropped, so the position ``(epoch,
position)`` in a checkpoint resumes with exactly the batches an uninterrupted run would see.
Whole-tensor datasets (:func:`ganplug.data.access.whole_tensors`) are indexed directly (kept on a
CUDA device up to 1 GiB); others go through a ``DataLoader`` whose sampler yields the same indices.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ganplug.data.access import collate_items, whole_tensors
from ganplug.errors import GanplugError, UsageError

# A TensorDataset up to this size is moved to a CUDA device once, so batches need no copy.
_DEVICE_CACHE_BYTES = 1 << 30
_MASK64 = (1 << 64) - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed mixing ``seed`` and ``epoch`` (SplitMix64 finaliser; pure integer math)."""
    x = ((seed & _MASK64) * 0x9E3779B97F4A7C15 + (epoch & _MASK64) + 0x632BE59BD9B4E5F5) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & 0x7FFF_FFFF_FFFF_FFFF


def epoch_permutation(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of epoch ``epoch``: a permutation of ``range(size)`` (int64, CPU)."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(size, generator=generator)


def _split(batch: Any) -> tuple[torch.Tensor, Any]:
    """``(samples, labels or None)`` of a collated batch, or of a tuple/list's first two entries."""
    labels = None
    if isinstance(batch, (tuple, list)):
        labels = batch[1] if len(batch) > 1 else None
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise GanplugError(f"dataset items must be tensors or (tensor, label) tuples, got {type(batch).__name__}")
    return batch, labels


def check_labels(labels: Any, num_classes: int, where: str) -> torch.Tensor:
    """``labels`` as an int64 ``(N,)`` tensor of classes in ``[0, num_classes)``, else GanplugError
    saying what is wrong with ``where`` ("the dataset's labels", ...)."""
    if labels is None:
        raise GanplugError("the dataset has no labels: its items are samples without a (sample, label) pair")
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise GanplugError(
            f"{where} must be integers, one per sample; got {labels.dtype} of shape {tuple(labels.shape)}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise GanplugError(
            f"{where} range over {int(labels.min())}..{int(labels.max())}, outside the {num_classes} classes 0..{num_classes - 1}"
        )
    return labels.long()


class BatchOrder:
    """Batches of ``batch_size`` samples ``(B, *data_shape)`` (float, on ``device``), forever, with
    their labels ``(B,)`` int64 in ``[0, num_classes)`` when ``num_classes`` > 0. ``shard=(start,
    stop)``: that slice of each global batch (one rank's part); the position stays global."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        shard: tuple[int, int] | None = None,
        num_classes: int = 0,
    ) -> None:
        self.dataset = dataset
        self.num_classes = int(num_classes)
        self.size = len(dataset)  # type: ignore[arg-type]
        if batch_size < 1:
            raise GanplugError(f"batch_size must be at least 1, got {batch_size}")
        if batch_size > self.size:
            raise UsageError(
                f"batch_size {batch_size} is larger than the dataset ({self.size} samples): "
                f"pass --batch-size {self.size} or less"
            )
        self.batch_size = batch_size
        self.shard = (0, batch_size) if shard is None else (int(shard[0]), int(shard[1]))
        if not 0 <= self.shard[0] < self.shard[1] <= batch_size:
            raise GanplugError(f"shard {shard} is not a slice of a batch of {batch_size}")
        self.seed = int(seed)
        self.device = torch.device(device)
        self.epoch = 0
        self.position = 0
        self._perm: torch.Tensor | None = None
        self._perm_epoch = -1
        self._iterator: Iterator[Any] | None = None
        self.samples: torch.Tensor | None = None  # the fast path's whole data, indexed directly
        self.labels: torch.Tensor | None = None  # and its labels (with num_classes)
        samples, labels, self._convert = whole_tensors(dataset)
        if samples is not None:
            if self._convert is None and not samples.is_floating_point():
                samples = samples.float()
            if self.num_classes:
                self.labels = check_labels(labels, self.num_classes, "the dataset's labels")
            if self.device.type == "cuda" and samples.numel() * samples.element_size() <= _DEVICE_CACHE_BYTES:
                samples = samples.to(self.device)
                self.labels = self.labels.to(self.device) if self.labels is not None else None
            self.samples = samples

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "size", "batch_size"}``: plain ints, checkpoint-safe."""
        return {"epoch": self.epoch, "position": self.position, "size": self.size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position (the dataset size and batch size must match)."""
        if int(state.get("size", self.size)) != self.size:
            raise UsageError(
                f"the dataset now has {self.size} samples but the checkpoint was trained on {state['size']}: "
                "resume with the same data, or start a new run with --out"
            )
        if int(state.get("batch_size", self.batch_size)) != self.batch_size:
            raise UsageError("the batch size differs from the checkpoint's: start a new run with --out")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._iterator = None

    # -- batches -------------------------------------------------------------------------------

    def _epoch_order(self) -> torch.Tensor:
        """The next batch's permutation: the next epoch's when this one has less than a batch left."""
        if self.position + self.batch_size > self.size:
            self.epoch, self.position = self.epoch + 1, 0
        if self._perm is None or self._perm_epoch != self.epoch:
            self._perm = epoch_permutation(self.size, self.seed, self.epoch)
            self._perm_epoch, self._iterator = self.epoch, None
        return self._perm

    def next_batch(self) -> torch.Tensor:
        """The next batch of samples, ``(batch_size, *data_shape)`` float, on the device."""
        return self._next(False)[0]

    def next_labelled_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch ``(B, *data_shape)`` float and its labels ``(B,)`` int64, on the device."""
        batch, labels = self._next(True)
        assert labels is not None
        return batch, labels

    def _next(self, labelled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.samples is not None:
            start, stop = self.shard
            indices = self._epoch_order()[self.position + start : self.position + stop].to(self.samples.device)
            self.position += self.batch_size
            batch = self.samples[indices] if self._convert is None else self._convert(self.samples[indices])
            labels = self.labels[indices] if labelled and self.labels is not None else None
        else:
            batch, labels = self._loader_batch()
            labels = check_labels(labels, self.num_classes, "the dataset's labels") if labelled else None
        if not batch.is_floating_point():
            batch = batch.float()
        if labels is not None:
            labels = labels.to(self.device, non_blocking=True)
        return batch.to(self.device, non_blocking=True), labels

    def _loader_batch(self) -> tuple[torch.Tensor, Any]:
        perm = self._epoch_order()
        if self._iterator is None:
            rest = perm[
                self.position : self.position + self.batch_size * ((self.size - self.position) // self.batch_size)
            ]
            start, stop = self.shard
            rest = rest.view(-1, self.batch_size)[:, start:stop].reshape(-1)
            loader = DataLoader(
                self.dataset,
                batch_size=stop - start,
                sampler=rest.tolist(),
                collate_fn=collate_items,  # one line for samples of different shapes
                drop_last=True,
                pin_memory=self.device.type == "cuda",
                # A private generator: creating the iterator must not draw from the global RNG.
                generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)),
            )
            self._iterator = iter(loader)
        batch = _split(next(self._iterator))
        self.position += self.batch_size
        if self.position + self.batch_size > self.size:
            self._iterator = None
        return batch
