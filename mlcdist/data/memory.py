"""In-memory loaders over row tensors: the trainer's and eval's loader contracts without shards.

For small vector sets (Mulan yeast and scene: ~1.5k rows) that are read once into memory:
reading shards every epoch would dominate a step that takes a millisecond. Batches follow
``mlcdist/data/batch.py``: :class:`TensorPretrainLoader` yields :class:`PretrainBatch`
(two masked views, ``augment.vector_views``), :class:`TensorEvalLoader` yields
:class:`EvalBatch`. Shapes: ``x`` is (N, D) float, ``y`` is (N, C) float 0/1.

The trainer's ``DatasetInfo`` for such rows is :meth:`DatasetInfo.for_tensors
<mlcdist.data.info.DatasetInfo.for_tensors>`.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from mlcdist.data import augment
from mlcdist.data.batch import DecodedViews, EvalBatch, PretrainBatch
from mlcdist.errors import MlcdistError
from mlcdist.seeds import epoch_seed, sample_seeds


def _nothing() -> None:
    return None


class TensorPretrainLoader(DecodedViews):
    """Two masked views per row, the trainer's loader protocol (``set_epoch``, ``len``,
    iteration yielding ``{"views", "labels"}``, ``to_device`` from :class:`DecodedViews`).

    Epoch ``e`` is the permutation drawn from ``torch.Generator().manual_seed(epoch_seed(seed,
    e))`` (``mlcdist/seeds.py``), cut to ``len(self) = N // batch_size`` full batches (the last partial batch is
    dropped, as the shard pipeline does). The views of row ``i`` are seeded by
    ``seeds.sample_seeds(seed, e, i)``, so a run is reproducible and a resumed epoch
    (``skip_batches``) sees the same batches. ``on_epoch`` is called at the start of every pass
    (progress events)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, mask_ratio: float, seed: int,
                 on_epoch: Callable[[], None] = _nothing):
        if len(x) < batch_size:
            raise MlcdistError(f"{len(x)} training rows give no batch of data.batch_size="
                               f"{batch_size}; lower data.batch_size")
        self.x, self.y, self.batch_size, self.mask_ratio, self.seed = x, y, batch_size, mask_ratio, seed
        self.on_epoch = on_epoch
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def __iter__(self) -> Iterator[PretrainBatch]:
        self.on_epoch()
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(
            epoch_seed(self.seed, self.epoch)))
        rows = order[: len(self) * self.batch_size]
        # The whole epoch's masks in one vectorised call (per-sample seeds: the same views as
        # batch by batch, at a fraction of the per-call overhead).
        seeds = sample_seeds(self.seed, self.epoch, rows)
        first, second = augment.vector_views(self.x[rows], seeds, self.mask_ratio)
        labels = self.y[rows]
        for b in range(self.skip, len(self)):
            part = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield {"views": (first[part], second[part]), "labels": labels[part]}


class TensorEvalLoader:
    """Batches in the eval pipeline's format (``input``, ``labels``, ``index``, ``valid``).

    ``shuffle_seed`` (finetune training): a new seeded order on every pass, like the authors'
    random sampler; ``on_epoch`` is called at the start of every pass. Scoring passes keep the
    row order (``eval.features.collect`` sorts by ``index`` anyway). No ``__len__``, so eval's
    per-epoch progress display stays off for these tiny passes."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle_seed: Optional[int] = None,
                 on_epoch: Callable[[], None] = _nothing):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
        self.on_epoch = on_epoch

    def __iter__(self) -> Iterator[EvalBatch]:
        self.on_epoch()
        n = len(self.x)
        order = torch.arange(n) if self.generator is None else torch.randperm(n, generator=self.generator)
        for rows in order.split(self.batch_size):
            yield {"input": self.x[rows], "labels": self.y[rows], "index": rows,
                   "valid": torch.ones(len(rows), dtype=torch.bool)}
