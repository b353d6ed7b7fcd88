"""Epoch arithmetic: which samples each rank and loader worker reads, as pure functions.

Notation: ``N`` samples in ``S`` shards of sizes ``n_0 .. n_{S-1}`` (from ``dataset.json``),
``R`` ranks (world size), ``B`` per-rank batch size, ``W = max(1, num_workers)`` loader workers.

Per epoch ``e`` the global sample sequence is the concatenation of the shards in the order
``pi_e`` (a permutation seeded by ``(seed, e)``, identical on every rank; the identity in eval
mode). Position ``p`` of that sequence is sample ``p - c_k`` of shard ``pi_e(k)`` where
``c_k = sum_{i<k} n_{pi_e(i)}`` and ``c_k <= p < c_{k+1}``.

* ``train`` (drop_last): ``b = floor(N / (R*B))`` batches per rank; rank ``r`` owns positions
  ``[r*b*B, (r+1)*b*B)``; the ``N - R*b*B`` tail positions are dropped this epoch (different
  samples every epoch, because the shard order changes).
* ``eval``: ``b = ceil(N / (R*B))``; rank ``r`` owns ``N_r = floor(N/R) + [r < N mod R]`` real
  samples starting at ``sum_{q<r} N_q``, followed by ``b*B - N_r`` masked padding entries
  (``ceil(ceil(N/R)/B) = ceil(N/(R*B))``, so the padding never exceeds the last batches).
* ``resampled``: ``b`` as in train; every worker draws whole shards with replacement.

Workers: worker ``w`` yields ``b_w = |range(w, b, W)| = ceil((b - w) / W)`` batches, which are
the rank batches ``w, w+W, w+2W, ...``: DataLoader's round-robin over workers then emits the rank
batches ``0, 1, 2, ...`` in order. Worker ``w`` owns the contiguous slice of its rank's positions
``[B * sum_{v<w} b_v, B * sum_{v<=w} b_v)``, so it opens only the shards overlapping that slice.
Resuming at rank batch ``k`` skips the first ``k_w = |range(w, min(k, b), W)|`` batches of worker
``w``.

Held-out rows (``split.HeldOut``: the validation carve that pretraining leaves out): all of the
above runs on the kept rows only (``n_i`` = the kept rows of shard ``i``, ``N`` their sum), and each
planned slice of kept rows is read as the shard slice that spans it; the readers drop the
held-out rows inside (``ShardStream._raw``, ``ResidentVectors.epoch_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Optional, Sequence

import numpy as np

from mlcdist.data.split import HeldOut
from mlcdist.seeds import mix_seed

PlanMode = Literal["train", "eval", "resampled"]


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` (offsets inside the shard) of shard ``shard`` (dataset.json index)."""

    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker of one rank produces in one epoch.

    ``batches`` counts every batch of the worker including the ``skip`` leading ones that are
    not decoded; ``segments`` list the real samples in reading order (empty when resampled);
    ``padding`` masked entries follow them (eval only).
    ``len(segments samples) + padding == batches * batch_size`` always holds.
    """

    batches: int
    skip: int
    segments: tuple[Segment, ...]
    padding: int


def batches_per_rank(num_samples: int, world_size: int, batch_size: int, mode: PlanMode) -> int:
    """``floor(N / (R*B))`` for train/resampled (drop_last), ``ceil(N / (R*B))`` for eval."""
    per_step = world_size * batch_size
    if mode == "eval":
        return -(-num_samples // per_step)
    return num_samples // per_step


def worker_batches(batches: int, num_workers: int, worker: int) -> int:
    """``b_w = |range(w, b, W)|``: the rank batches ``w, w+W, ...`` belong to worker ``w``."""
    return len(range(worker, batches, max(1, num_workers)))


def worker_skip(skip_batches: int, batches: int, num_workers: int, worker: int) -> int:
    """Worker batches to skip when resuming at rank batch ``k``: ``|range(w, min(k, b), W)|``."""
    return len(range(worker, min(skip_batches, batches), max(1, num_workers)))


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """``pi_e``: a permutation of the shards seeded by ``(seed, epoch)`` (identity if not shuffled)."""
    if not shuffle:
        return list(range(num_shards))
    rng = np.random.default_rng(mix_seed(seed, epoch, 0x5A4D))
    return [int(i) for i in rng.permutation(num_shards)]


def rank_span(num_samples: int, world_size: int, batch_size: int, rank: int, mode: PlanMode) -> tuple[int, int]:
    """``(first position, number of real samples)`` of rank ``r`` in the epoch sequence.

    train: ``(r*b*B, b*B)``; eval: ``(sum_{q<r} N_q, N_r)`` with ``N_q = floor(N/R) + [q < N mod R]``.
    """
    if mode == "eval":
        base, extra = divmod(num_samples, world_size)
        return rank * base + min(rank, extra), base + (1 if rank < extra else 0)
    per_rank = batches_per_rank(num_samples, world_size, batch_size, mode) * batch_size
    return rank * per_rank, per_rank


def segments_between(sizes: Sequence[int], order: Sequence[int], start: int, stop: int) -> list[Segment]:
    """Cut positions ``[start, stop)`` of the sequence ``concat(shards in order)`` into shard slices."""
    ordered = np.asarray([sizes[i] for i in order], dtype=np.int64)
    ends = np.cumsum(ordered)
    begins = ends - ordered
    out = []
    for k in np.nonzero((begins < stop) & (ends > start))[0]:
        lo, hi = max(start, int(begins[k])), min(stop, int(ends[k]))
        out.append(Segment(order[k], lo - int(begins[k]), hi - int(begins[k])))
    return out


def plan_worker(
    sizes: Sequence[int],
    *,
    mode: PlanMode,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    num_workers: int,
    worker: int,
    skip_batches: int = 0,
    held: Optional[HeldOut] = None,
) -> WorkerPlan:
    """The full plan of worker ``worker`` of rank ``rank`` for ``epoch`` (see module docstring);
    with ``held``, over its kept rows (segments are shard slices spanning them)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    workers = max(1, num_workers)
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is outside 0..{workers - 1}")
    if held is not None:
        sizes = held.kept_sizes
    total = int(sum(sizes))
    b = batches_per_rank(total, world_size, batch_size, mode)
    mine = worker_batches(b, workers, worker)
    skip = worker_skip(skip_batches, b, workers, worker)
    if mode == "resampled":
        return WorkerPlan(mine, skip, (), 0)
    first, real = rank_span(total, world_size, batch_size, rank, mode)
    lo = batch_size * sum(worker_batches(b, workers, v) for v in range(worker))
    hi = lo + batch_size * mine
    real_hi = min(hi, real)
    real_lo = min(lo, real_hi)
    order = shard_order(len(sizes), seed, epoch, shuffle=(mode == "train"))
    segments = segments_between(sizes, order, first + real_lo, first + real_hi)
    if held is not None:
        segments = [Segment(seg.shard, *held.to_full(seg.shard, seg.start, seg.stop))
                    for seg in segments if seg.stop > seg.start]
    return WorkerPlan(mine, skip, tuple(segments), (hi - lo) - (real_hi - real_lo))


def resampled_segments(sizes: Sequence[int], need: int, rng: np.random.Generator,
                       held: Optional[HeldOut] = None) -> Iterator[Segment]:
    """``resampled`` mode: whole shards drawn with replacement (probability proportional to their
    size, or their kept rows with ``held``) until ``need`` samples are covered; the last draw is
    cut short."""
    if held is not None:
        sizes = held.kept_sizes
    weights = np.asarray(sizes, dtype=np.float64)
    while need > 0:
        k = int(rng.choice(len(weights), p=weights / weights.sum()))
        take = min(need, int(sizes[k]))
        yield Segment(k, *held.to_full(k, 0, take)) if held is not None else Segment(k, 0, take)
        need -= take
