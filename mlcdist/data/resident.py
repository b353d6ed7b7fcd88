"""Vector shards read once into memory, batched by indexing: the streaming loader's batches, fast.

Streaming a small vector set (every Mulan set) costs far more than training on it: each epoch
reopens the tars and decodes one ``.npy`` per sample in Python, ~50 ms per batch of 64 against a
~3 ms step. :class:`ResidentVectors` reads the shards once (on the first pass) into an (N, D)
float32 tensor, an (N, C) label tensor and a usable-row mask, and then builds each epoch from row
ids alone:

1. every plan worker's rows in reading order: ``plan.py``'s segments (or resampled draws) with
   the same seeds as :class:`~mlcdist.data.pipeline.ShardStream`;
2. the same buffer shuffle (:func:`buffered_order`: ``pipeline.buffer_shuffle``'s order, its
   random draws made in one call);
3. chunks of ``B``, worker ``w``'s ``k``-th chunk being rank batch ``w + k*W``, as DataLoader's
   round-robin delivers them;
4. features, two masked views (per-sample seeds, so computed for a block of batches at once),
   labels and indices by indexing, in blocks of about :data:`BLOCK_ROWS` rows.

So for the same recipe the batches equal the streaming loader's, value for value, in the same
order, resumes included (``tests/unit/data/test_resident.py`` compares them). A batch with
corrupt or missing samples goes through the streaming loader's own refill/mask code
(``ShardStream._assemble``), so holes behave the same too, and count in ``Loader.skipped`` every
epoch; their warnings come once, when the shards are read. Every rank holds the whole set.
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import numpy as np
import torch

from mlcdist.data import augment as aug
from mlcdist.data.info import DatasetInfo
from mlcdist.data.pipeline import Loader, ShardStream
from mlcdist.data.records import Shortfall, read_shard
from mlcdist.seeds import sample_seeds

log = logging.getLogger("mlcdist.data")
RESIDENT_MAX_BYTES = 1 << 30  # features + labels as float32; Mulan's largest (bookmarks) is ~0.8 GiB
BLOCK_ROWS = 4096  # rows whose views are drawn in one vectorised call


def fits_in_memory(info: DatasetInfo) -> bool:
    """Vector data whose float32 features and labels take at most :data:`RESIDENT_MAX_BYTES`."""
    if info.modality != "vector" or not info.feature_dim:
        return False
    return info.num_samples * (info.feature_dim + info.num_classes) * 4 <= RESIDENT_MAX_BYTES


def buffered_order(items: list, size: int, rng: np.random.Generator) -> list:
    """The order ``pipeline.buffer_shuffle(iter(items), size, rng)`` yields, for a known list:
    its per-item ``rng.integers(size)`` draws are one vectorised draw (NumPy gives the same
    numbers and leaves the generator in the same state)."""
    if size <= 1:
        return list(items)
    buffer, out = list(items[:size]), []
    if len(items) > size:
        for k, item in zip(rng.integers(size, size=len(items) - size).tolist(), items[size:]):
            out.append(buffer[k])
            buffer[k] = item
    rng.shuffle(buffer)
    return out + buffer


class ResidentVectors(ShardStream):
    """A :class:`ShardStream` of vector shards held in memory (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.info.modality != "vector":
            raise ValueError(f"{self.info.root}: resident loading is for vector data, not {self.info.modality}")
        self.loaded = False

    # -- reading once ----------------------------------------------------------------------------

    def ensure_loaded(self) -> None:
        if not self.loaded:
            self._load()

    def _load(self) -> None:
        """Read every shard once; unusable samples keep a zero row and ``usable = False``
        (warned as the stream warns), missing ones also their :class:`Shortfall`."""
        n, dim, classes = sum(self.shards.sizes), self.info.feature_dim, self.info.num_classes
        self.x = torch.zeros(n, dim)
        self.y = torch.zeros(n, classes)
        self.usable = np.zeros(n + 1, dtype=bool)  # entry n stands for padding (row -1)
        self.index = np.full(n + 1, -1, dtype=np.int64)  # global sample index of each row
        self.labels: list[list[int]] = [[] for _ in range(n)]
        self.shortfalls: dict[int, Shortfall] = {}
        self.row_start = np.cumsum([0, *self.shards.sizes])[:-1]
        self._warned = 0
        for k, url in enumerate(self.shards.urls):
            first, offset = int(self.row_start[k]), self.shards.offsets[k]
            for pos, sample in read_shard(url, 0, self.shards.sizes[k]):
                row = first + pos
                self.index[row] = offset + pos
                if isinstance(sample, Shortfall):
                    self.shortfalls[row] = sample
                decoded = ShardStream._decode(self, offset + pos, sample)
                if decoded is not None:
                    self.x[row] = torch.from_numpy(np.asarray(decoded[0], dtype=np.float32))
                    self.labels[row] = decoded[1]
                    self.y[row, decoded[1]] = 1.0
                    self.usable[row] = True
        self.loaded = True

    # -- one epoch ---------------------------------------------------------------------------------

    def epoch_rows(self) -> np.ndarray:
        """(batches, B) row ids of this rank's epoch in delivery order; -1 is eval padding."""
        workers, size = self.workers, self.data.batch_size
        rows = np.empty((self.batches, size), dtype=np.int64)
        for w in range(workers):
            plan = self._plan(w)
            parts = [self.row_start[seg.shard] + self._positions(seg) for seg in self._segments(plan, w)]
            order = np.concatenate([*parts, np.full(plan.padding, -1, dtype=np.int64)])
            if self.plan_mode != "eval":
                order = np.asarray(buffered_order(order.tolist(), self.data.shuffle_buffer,
                                                  self._shuffle_rng(w)), dtype=np.int64)
            rows[w::workers] = order.reshape(plan.batches, size)
        return rows

    def _positions(self, seg) -> np.ndarray:
        """The shard positions of ``seg`` the stream yields: held-out rows dropped (``_raw``)."""
        if self.held is None:
            return np.arange(seg.start, seg.stop)
        return self.held.positions(seg.shard, seg.start, seg.stop)

    def batches_from(self, skip: int) -> Iterator[dict]:
        """Rank batches ``skip, skip+1, ...`` of the epoch, with ``shortfall`` and ``skipped``
        as the stream's workers deliver them."""
        self.ensure_loaded()
        rows = self.epoch_rows()[skip:]
        clean = self.usable[rows].all(axis=1)
        per_block = max(1, BLOCK_ROWS // self.data.batch_size)
        j = 0
        while j < len(rows):
            if not clean[j]:  # corrupt, missing or padding entries: the stream's own code
                yield self._batch([self._entry(r) for r in rows[j].tolist()])
                j += 1
                continue
            stop = j + 1
            while stop < len(rows) and clean[stop] and stop - j < per_block:
                stop += 1
            yield from self._clean_block(rows[j:stop])
            j = stop

    def _entry(self, row: int) -> tuple[int, Optional[int | Shortfall]]:
        """The ``(global index, raw sample)`` chunk entry the stream would hold for ``row``;
        here the raw sample is the row id (decoded by :meth:`_decode`)."""
        if row < 0:
            return -1, None
        if not self.usable[row]:
            return int(self.index[row]), self.shortfalls.get(row)
        return int(self.index[row]), row

    def _decode(self, index: int, sample) -> Optional[tuple[np.ndarray, list[int]]]:
        if isinstance(sample, (int, np.integer)) and not isinstance(sample, bool):
            return self.x[sample].numpy(), self.labels[sample]
        return None

    def _clean_block(self, rows: np.ndarray) -> Iterator[dict]:
        """Batches without holes, their views drawn together (per-sample seeds: the same views)."""
        size = self.data.batch_size
        flat = torch.from_numpy(rows.reshape(-1))
        index = torch.from_numpy(self.index[rows.reshape(-1)])
        x, labels = self.x[flat], self.y[flat]
        if self.mode == "pretrain":
            views = aug.vector_views(x, sample_seeds(self.data.seed, self.epoch, index), self.augment.mask_ratio)
        for b in range(len(rows)):
            part = slice(b * size, (b + 1) * size)
            if self.mode == "pretrain":
                yield {"views": tuple(v[part] for v in views), "labels": labels[part], "index": index[part],
                       "skipped": 0, "shortfall": ""}
            else:
                yield {"input": x[part], "labels": labels[part], "index": index[part],
                       "valid": torch.ones(size, dtype=torch.bool), "skipped": 0, "shortfall": ""}


class ResidentLoader(Loader):
    """:class:`~mlcdist.data.pipeline.Loader` over :class:`ResidentVectors`: no worker processes."""

    def _source(self) -> Iterator[dict]:
        return self.stream.batches_from(self.stream.skip_batches)
