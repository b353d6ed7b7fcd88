"""The seeded validation carve, shared by pretraining (which leaves it out) and evaluation (which
validates on it), and the held-out rows of the epoch plan.

A data set without a ``data.val`` split gets its validation rows carved from ``data.train``:
``carve_mask(N, f, seed)`` picks ``max(1, round(f*N))`` of the ``N`` dataset indices (capped at
``N-1``) with a seeded permutation. ``mlcdist.eval`` validates on exactly those rows, and
``mlcdist.train`` (``data.hold_out_val``, on by default) never trains on them, so choices made on
validation (epoch, threshold) are made on rows the encoder has not seen, labels included.

Example::

    >>> mask = carve_mask(10, 0.2, seed=0)            # bool (10,): rows 1 and 4 validate
    >>> held = HeldOut.of(mask, sizes=[6, 4], offsets=[0, 6])
    >>> held.kept_sizes                               # rows each shard still gives
    (4, 4)
    >>> held.to_full(0, 0, 3)                         # kept rows 0..2 of shard 0 = positions 0, 2, 3
    (0, 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from mlcdist.config import EvalConfig
from mlcdist.data.info import DatasetError


def carve_mask(num_samples: int, fraction: float, seed: int) -> Tensor:
    """Bool mask over dataset indices ``0..N-1``: ``max(1, round(f*N))`` of them (a seeded
    random subset, capped at ``N-1``) form the validation split, the rest stay in train."""
    if num_samples < 2:
        raise DatasetError(f"cannot carve a validation split from {num_samples} sample(s)")
    count = min(num_samples - 1, max(1, round(fraction * num_samples)))
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(num_samples, dtype=torch.bool)
    mask[perm[:count]] = True
    return mask


def pretraining_hold_out(recipe: Mapping[str, Any]) -> Optional[tuple[float, int]]:
    """``(fraction, seed)`` of the carve a pretraining recipe (a resolved recipe as a dict, e.g. a
    checkpoint's) leaves out, or None: ``data.hold_out_val`` and no ``data.val``. A recipe from
    before the key existed held nothing out."""
    data, evaluation = recipe.get("data") or {}, recipe.get("eval") or {}
    if not data.get("hold_out_val", False) or data.get("val"):
        return None
    defaults = EvalConfig()
    return (float(evaluation.get("val_fraction", defaults.val_fraction)),
            int(evaluation.get("seed", defaults.seed)))


@dataclass(frozen=True)
class HeldOut:
    """Samples no epoch reads, per shard: ``kept[k]`` holds the positions inside shard ``k``
    (``dataset.json`` order) that stay in, ascending; ``kept_sizes[k] = len(kept[k])``.

    The epoch plan (``plan.py``) runs its arithmetic on ``kept_sizes``, so every rank and worker
    still gets its exact batch count, and :meth:`to_full` turns a planned slice of kept rows into
    the shard slice to read (the readers then drop the held-out rows inside it).
    """

    kept: tuple[np.ndarray, ...]
    excluded: tuple[np.ndarray, ...]  # bool per shard position: True = held out

    @classmethod
    def of(cls, mask: Tensor | np.ndarray, sizes: Sequence[int], offsets: Sequence[int]) -> "HeldOut":
        """From a bool mask over global sample indices (shard offset + position)."""
        flags = np.asarray(mask, dtype=bool)
        excluded = []
        for size, offset in zip(sizes, offsets):
            part = np.zeros(size, dtype=bool)
            inside = flags[offset:offset + size]
            part[:len(inside)] = inside
            excluded.append(part)
        return cls(tuple(np.flatnonzero(~e) for e in excluded), tuple(excluded))

    @property
    def kept_sizes(self) -> tuple[int, ...]:
        return tuple(len(k) for k in self.kept)

    @property
    def count(self) -> int:
        return int(sum(int(e.sum()) for e in self.excluded))

    def to_full(self, shard: int, kept_start: int, kept_stop: int) -> tuple[int, int]:
        """Shard positions ``[start, stop)`` spanning kept rows ``kept_start .. kept_stop-1``."""
        if kept_stop <= kept_start:
            return 0, 0
        rows = self.kept[shard]
        return int(rows[kept_start]), int(rows[kept_stop - 1]) + 1

    def positions(self, shard: int, start: int, stop: int) -> np.ndarray:
        """The kept positions of shard ``shard`` inside ``[start, stop)``, ascending."""
        rows = self.kept[shard]
        return rows[np.searchsorted(rows, start):np.searchsorted(rows, stop)]
