"""The batch contract between loaders and the trainer / eval.

A pretraining loader yields :class:`PretrainBatch` (decoded views) or :class:`RawJpegBatch`
(``augment.device: gpu``: packed JPEG bytes, decoded and augmented on the device), and turns
either into on-device views with its ``to_device`` method, the one device stage: the trainer
only loops. Eval loaders yield :class:`EvalBatch`.

Shapes (B = per-rank batch, C = classes, D = vector width, S = image side):

==========  ===============================================  =====================================
batch       keys                                             shapes / dtypes
==========  ===============================================  =====================================
pretrain    ``views``, ``labels``, ``index`` (optional)      2 x (B, 3, S, S) or 2 x (B, D) float;
                                                             (B, C) float 0/1; (B,) int64
raw JPEG    ``jpeg``, ``jpeg_sizes``, ``labels``, ``index``  (total bytes,) uint8; (B,) int64; ...
eval        ``input``, ``labels``, ``index``, ``valid``      (B, 3, S, S) or (B, D); ...; (B,) bool
==========  ===============================================  =====================================
"""

from __future__ import annotations

from typing import Iterator, Protocol, TypedDict

import torch
from torch import Tensor


class PretrainBatch(TypedDict, total=False):
    views: tuple[Tensor, ...]
    labels: Tensor
    index: Tensor


class RawJpegBatch(TypedDict, total=False):
    jpeg: Tensor
    jpeg_sizes: Tensor
    labels: Tensor
    index: Tensor


class EvalBatch(TypedDict):
    input: Tensor
    labels: Tensor
    index: Tensor
    valid: Tensor


class PretrainLoader(Protocol):
    """What the trainer needs of a loader (shards: ``data.pipeline.Loader``; in memory:
    ``data.memory``; tests: any class with these four methods)."""

    def __len__(self) -> int:
        """Batches per epoch on this rank."""

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch; the next pass starts at batch ``skip_batches`` (exact resume)."""

    def __iter__(self) -> Iterator[PretrainBatch | RawJpegBatch]: ...

    def to_device(self, batch: PretrainBatch | RawJpegBatch, device: torch.device, *, step: int,
                  micro: int, channels_last: bool = False) -> PretrainBatch:
        """``batch``'s views and labels on ``device``; ``step``/``micro`` (optimizer step and
        micro-batch of the epoch) seed augmentations that run on the device."""


def views_to_device(batch: PretrainBatch, device: torch.device, *,
                    channels_last: bool = False) -> PretrainBatch:
    """Views and labels of a decoded batch on ``device`` (non-blocking from pinned memory);
    4-d image views in channels-last layout when asked."""
    views = tuple(v.to(device, non_blocking=True) for v in batch["views"])
    if channels_last and views[0].dim() == 4:
        views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
    return {"views": views, "labels": batch["labels"].to(device, non_blocking=True)}


class DecodedViews:
    """Mixin: ``to_device`` for loaders whose batches already hold decoded views."""

    def to_device(self, batch: PretrainBatch, device: torch.device, *, step: int, micro: int,
                  channels_last: bool = False) -> PretrainBatch:
        return views_to_device(batch, device, channels_last=channels_last)
