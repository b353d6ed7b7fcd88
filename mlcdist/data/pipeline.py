"""Read side: shards -> batches, with the fixed per-rank batch counts of ``plan.py``.

Usage::

    loader = make_loader(cfg.data.train, cfg.data, cfg.augment, mode="pretrain", rank=r, world_size=R)
    # make_loader (``loaders.py``) picks this module's streaming Loader or ``resident.py``'s
    for epoch in range(first, last):
        loader.set_epoch(epoch, skip_batches=k if resuming else 0)
        for batch in loader: ...   # exactly len(loader) - k batches on every rank

Batches (built inside the workers; ``B`` = ``data.batch_size``, ``C`` classes)::

    pretrain: {"views": (B x ..., B x ...), "labels": B x C float32, "index": B int64}
    pretrain, images, augment.device=gpu: {"jpeg": all JPEG bytes concatenated (uint8),
              "jpeg_sizes": B int64, "labels", "index"}: undecoded; the trainer decodes and draws
              the views on the device (``gpu_augment.device_views``)
    eval:     {"input": B x ..., "labels": B x C, "index": B, "valid": B bool}

Worker ``w`` reads one contiguous slice of its rank's share (see ``plan.py``), so with several
workers the eval padding sits at the end of the last worker's batches, not necessarily in the
rank's final batch: always mask with ``valid``. The order depends on ``num_workers``: an exact
resume needs the same ``world_size``, ``batch_size`` and ``num_workers``.

``index`` is the sample's global position in ``dataset.json`` order (shard offset + position in
the shard; equal to ``int(KEY)`` for converter-written shards); padding has index -1.

Corrupt or missing samples never change the batch count: in pretrain mode the hole is refilled
with another sample of the same batch (cycling over its good samples, with fresh views via a
salt); in eval mode the entry is masked (``valid=False``). A batch whose samples are all
unreadable raises (the shard is broken: re-run the converter). ``Loader.skipped`` counts them.

Vector shards that fit in memory are read once and batched by indexing (``resident.py``,
``loaders.make_loader``'s default for them): the same batches in the same order, without the per-sample
decoding. The loader is already split by rank and worker and batched: do NOT pass it to
``accelerate.prepare`` (accelerate would re-shard it and break the equal batch counts).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls

from mlcdist.config import AugmentConfig, DataConfig
from mlcdist.data import augment as aug
from mlcdist.data import gpu_augment
from mlcdist.data.batch import PretrainBatch, views_to_device
from mlcdist.data.info import DatasetError, DatasetInfo, join_url, load_dataset_info
from mlcdist.data.plan import PlanMode, Segment, WorkerPlan, batches_per_rank, plan_worker, resampled_segments
from mlcdist.data.records import LABELS_MEMBER, Shortfall, decode_labels, decode_vector, read_shard
from mlcdist.data.split import HeldOut
from mlcdist.errors import MlcdistError
from mlcdist.seeds import mix_seed, sample_seeds

log = logging.getLogger("mlcdist.data")
Mode = Literal["pretrain", "eval"]
_MAX_WARNINGS = 10  # per worker and epoch; the total is in Loader.skipped


@dataclass(frozen=True)
class ShardSet:
    """The shards to read: URLs, sample counts and global index of each shard's first sample."""

    urls: tuple[str, ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]


def resolve(location: str) -> tuple[DatasetInfo, ShardSet]:
    """A shard folder / ``dataset.json`` / shard URL or brace pattern -> (info, shards to read)."""
    location = str(location)
    info = None
    if location.endswith(".tar") or "{" in location:
        root = location.rsplit("/", 1)[0] if "/" in location else ""
        info = load_dataset_info(root or ".")
        wanted = [u[len(root) + 1:] if root else u for u in expand_urls(location)]
    else:
        info = load_dataset_info(location)
        wanted = [s.file for s in info.shards]
    starts = np.cumsum([0] + [s.num_samples for s in info.shards]).tolist()
    by_file = {s.file: i for i, s in enumerate(info.shards)}
    missing = [f for f in wanted if f not in by_file]
    if missing:
        raise DatasetError(f"{location}: {missing[0]} is not listed in {join_url(info.root, 'dataset.json')}; "
                         "pick shards named there")
    picked = [by_file[f] for f in wanted]
    shards = ShardSet(tuple(join_url(info.root, info.shards[i].file) for i in picked),
                      tuple(info.shards[i].num_samples for i in picked), tuple(starts[i] for i in picked))
    subset = [info.shards[i] for i in picked]
    return dataclasses.replace(info, shards=subset, num_samples=sum(shards.sizes)), shards


def buffer_shuffle(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Reservoir-style shuffle: keep ``size`` items, emit a random one per arriving item, drain."""
    if size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = int(rng.integers(size))
        buffer[k], item = item, buffer[k]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def chunks(items: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:  # cannot happen with a correct plan; fail loudly rather than emit a short batch
        raise RuntimeError(f"internal: {len(batch)} samples left over, plan promised full batches")


def multi_hot(label_lists: list[list[int]], num_classes: int) -> torch.Tensor:
    """``B x C`` float32 with ``y[b, j] = 1`` for every ``j`` in ``label_lists[b]``."""
    lengths = torch.tensor([len(x) for x in label_lists], dtype=torch.int64)
    rows = torch.repeat_interleave(torch.arange(len(label_lists)), lengths)
    cols = torch.tensor([j for x in label_lists for j in x], dtype=torch.int64)
    out = torch.zeros(len(label_lists), num_classes)
    out[rows, cols] = 1.0
    return out


class ShardStream(IterableDataset):
    """One rank's batches; each DataLoader worker builds its share from ``plan_worker``."""

    def __init__(self, info: DatasetInfo, shards: ShardSet, data: DataConfig, augment: AugmentConfig,
                 mode: Mode, rank: int, world_size: int, held: Optional[HeldOut] = None):
        if info.modality not in ("image", "vector"):
            raise DatasetError(f"{info.root}/dataset.json: modality {info.modality!r} must be 'image' or 'vector'")
        if info.modality == "vector" and not info.feature_dim:
            raise DatasetError(f"{info.root}/dataset.json: vector data needs feature_dim")
        self.info, self.shards, self.data, self.augment = info, shards, data, augment
        self.mode, self.rank, self.world_size = mode, rank, world_size
        self.held = held  # rows no epoch reads (split.py: pretraining leaves out the validation carve)
        self.plan_mode: PlanMode = "eval" if mode == "eval" else ("resampled" if data.resampled else "train")
        self.workers = max(1, data.num_workers)
        self.epoch, self.skip_batches = 0, 0
        self.transform = (aug.pretrain_image_transform if mode == "pretrain" else aug.eval_image_transform)(augment)
        # augment.device=gpu: pretrain image batches stay undecoded JPEG bytes (see module docstring)
        self.raw_jpeg = mode == "pretrain" and info.modality == "image" and augment.device == "gpu"
        readable = sum(held.kept_sizes) if held is not None else sum(shards.sizes)
        self.batches = batches_per_rank(readable, world_size, data.batch_size, self.plan_mode)
        if self.batches == 0:
            kept = f" (after holding out {held.count} for validation)" if held is not None else ""
            raise DatasetError(f"{info.root}: {readable} samples{kept} give no full batch of "
                               f"{data.batch_size} x {world_size} ranks; lower data.batch_size")

    # -- raw stream --------------------------------------------------------------------------

    def _plan(self, worker: int) -> WorkerPlan:
        """Plan worker ``worker``'s share of this rank's epoch (``plan.py``)."""
        return plan_worker(self.shards.sizes, mode=self.plan_mode, seed=self.data.seed, epoch=self.epoch,
                           rank=self.rank, world_size=self.world_size, batch_size=self.data.batch_size,
                           num_workers=self.workers, worker=worker, skip_batches=self.skip_batches,
                           held=self.held)

    def _segments(self, plan: WorkerPlan, worker: int) -> Iterable[Segment]:
        """The shard slices plan worker ``worker`` reads, in reading order."""
        if self.plan_mode == "resampled":
            rng = np.random.default_rng(mix_seed(self.data.seed, self.epoch, self.rank, worker, 0xE5A))
            return resampled_segments(self.shards.sizes, plan.batches * self.data.batch_size, rng, self.held)
        return plan.segments

    def _shuffle_rng(self, worker: int) -> np.random.Generator:
        return np.random.default_rng(mix_seed(self.data.seed, self.epoch, self.rank, worker, 0x5B))

    def _raw(self, plan: WorkerPlan, worker: int) -> Iterator[tuple[int, Optional[dict]]]:
        """``(global index, raw sample or None)`` for every planned entry; padding is ``(-1, None)``."""
        for seg in self._segments(plan, worker):
            dropped = self.held.excluded[seg.shard] if self.held is not None else None
            for pos, sample in read_shard(self.shards.urls[seg.shard], seg.start, seg.stop):
                if dropped is None or not dropped[pos]:
                    yield self.shards.offsets[seg.shard] + pos, sample
        for _ in range(plan.padding):
            yield -1, None

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        loader_worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.workers:
            raise RuntimeError(f"planned for {self.workers} workers, DataLoader runs {workers}")
        # DataLoader's round-robin always starts at its worker 0, but rank batch k (the first one
        # after a resume at k) belongs to plan worker k mod W: rotate the roles to match.
        worker = (loader_worker + self.skip_batches) % workers
        plan = self._plan(worker)
        raw = self._raw(plan, worker)
        if self.plan_mode != "eval":
            raw = buffer_shuffle(raw, self.data.shuffle_buffer, self._shuffle_rng(worker))
        self._warned = 0
        for j, chunk in enumerate(chunks(raw, self.data.batch_size)):
            if j >= plan.skip:  # skipped batches cost reading + shuffling, never decoding
                yield self._batch(chunk)

    # -- decode + views --------------------------------------------------------------------------

    def _decode(self, index: int, sample: Optional[dict]) -> Optional[tuple[Any, list[int]]]:
        """(image or vector, labels) or None (counted, warned) when the sample is unusable."""
        if not isinstance(sample, dict):  # padding (None) or a Shortfall
            return None
        try:
            labels = decode_labels(sample[LABELS_MEMBER], self.info.num_classes)
            if self.raw_jpeg:
                payload = gpu_augment.jpeg_payload(sample["jpg"])
            elif self.info.modality == "image":
                payload = aug.decode_image(sample["jpg"], aug.draft_side(self.augment, self.mode == "pretrain"))
            else:
                payload = decode_vector(sample["npy"])
                if payload.shape != (self.info.feature_dim,):
                    raise ValueError(f"vector shape {payload.shape}, dataset.json says ({self.info.feature_dim},)")
                if not np.isfinite(payload).all():  # would turn the whole batch's loss into NaN
                    raise ValueError(f"vector has {int(np.count_nonzero(~np.isfinite(payload)))} non-finite "
                                     "values (NaN/inf)")
            return payload, labels
        except Exception as err:  # corrupt sample: skipped and counted, never fatal
            if self._warned < _MAX_WARNINGS:
                log.warning("%s: sample %s (index %d) skipped: %s", sample.get("__url__"),
                            sample.get("__key__"), index, err)
            self._warned += 1
            return None

    def _views(self, payloads: list, index: torch.Tensor, salt: torch.Tensor, count: int) -> tuple:
        seeds = sample_seeds(self.data.seed, self.epoch, index, salt)
        if self.info.modality == "image":
            return aug.image_views(payloads, seeds, self.transform, count)
        x = torch.from_numpy(np.stack(payloads).astype(np.float32, copy=False))
        return aug.vector_views(x, seeds, self.augment.mask_ratio, count) if count == 2 else (x,)

    def _batch(self, chunk: list[tuple[int, Optional[dict]]]) -> dict:
        batch = self._assemble(chunk)
        # the first shortfall in this batch, as text: the main process decides (Loader.__iter__)
        batch["shortfall"] = next((str(s) for _, s in chunk if isinstance(s, Shortfall)), "")
        return batch

    def _assemble(self, chunk: list[tuple[int, Optional[dict]]]) -> dict:
        decoded = [self._decode(i, s) for i, s in chunk]
        good = [k for k, d in enumerate(decoded) if d is not None]
        skipped = sum(1 for (i, _), d in zip(chunk, decoded) if d is None and i >= 0)
        if self.mode == "pretrain":
            if not good:
                raise DatasetError(f"a whole batch of {len(chunk)} samples around index {chunk[0][0]} is "
                                   "unreadable; check the shards (converter `verify`) and re-convert")
            holes = [k for k, d in enumerate(decoded) if d is None]
            # hole h is refilled by good sample h mod |good|, with salt 1 + h // |good| (fresh views)
            source = good + [good[h % len(good)] for h in range(len(holes))]
            salt = torch.tensor([0] * len(good) + [1 + h // len(good) for h in range(len(holes))])
            index = torch.tensor([chunk[k][0] for k in source], dtype=torch.int64)
            labels = multi_hot([decoded[k][1] for k in source], self.info.num_classes)
            if self.raw_jpeg:
                jpeg, sizes = gpu_augment.pack_jpegs([decoded[k][0] for k in source])
                return {"jpeg": jpeg, "jpeg_sizes": sizes, "labels": labels, "index": index, "skipped": skipped}
            views = self._views([decoded[k][0] for k in source], index, salt, 2)
            return {"views": views, "labels": labels, "index": index, "skipped": skipped}
        valid = torch.tensor([d is not None for d in decoded])
        index = torch.tensor([i for i, _ in chunk], dtype=torch.int64)
        labels = torch.zeros(len(chunk), self.info.num_classes)
        shape = (3, self.augment.image_size, self.augment.image_size) if self.info.modality == "image" \
            else (self.info.feature_dim,)
        inputs = torch.zeros(len(chunk), *shape)
        if good:
            pos = torch.tensor(good)
            inputs[pos] = self._views([decoded[k][0] for k in good], index[pos], torch.zeros(len(good),
                                      dtype=torch.int64), 1)[0]
            labels[pos] = multi_hot([decoded[k][1] for k in good], self.info.num_classes)
        return {"input": inputs, "labels": labels, "index": index, "valid": valid, "skipped": skipped}


class Loader:
    """Iterable of one rank's batches for one epoch; ``len()`` is the batch count per epoch.

    ``set_epoch(e, skip_batches=k)`` picks the epoch (shard order, shuffles, views) and makes the
    next iteration yield only batches ``k, k+1, ...`` of it. ``skipped`` counts corrupt/missing
    samples seen so far (summed from the workers' batches).
    """

    def __init__(self, stream: ShardStream):
        self.stream = stream
        self.info = stream.info
        self.skipped = 0

    def to_device(self, batch: dict, device: torch.device, *, step: int, micro: int,
                  channels_last: bool = False) -> PretrainBatch:
        """On-device views and labels: raw-JPEG batches (``augment.device: gpu``) are decoded
        and augmented on ``device`` with a seed of (data seed, epoch, step, micro, rank)."""
        if "jpeg" in batch:
            data = self.stream.data
            seed = mix_seed(data.seed, self.epoch, step, micro, self.stream.rank)
            batch = gpu_augment.device_views(batch, self.stream.augment, device, seed)
        return views_to_device(batch, device, channels_last=channels_last)

    def __len__(self) -> int:
        return self.stream.batches

    def _check_shortfall(self, shortfall: str) -> None:
        if shortfall and not self.stream.data.allow_missing:
            raise ShardShortfallError(
                f"{shortfall}; re-convert the shard (python -m tools.make_shards ... and its verify), "
                "or set data.allow_missing=true to go on without its samples (counted as skipped)")

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        if not 0 <= skip_batches <= len(self):
            raise ValueError(f"skip_batches={skip_batches} is outside 0..{len(self)} (batches per epoch)")
        self.stream.epoch, self.stream.skip_batches = epoch, skip_batches

    def _source(self) -> Iterator[dict]:
        """The epoch's raw batches (with ``shortfall`` and ``skipped``), from DataLoader workers."""
        workers = self.stream.data.num_workers
        loader = DataLoader(self.stream, batch_size=None, num_workers=workers,
                            pin_memory=torch.cuda.is_available(), persistent_workers=False,
                            prefetch_factor=2 if workers > 0 else None,
                            worker_init_fn=ignore_stop_signals,
                            # a private generator: the DataLoader draws its base seed from it,
                            # so iterating never advances the global RNG (exact resume)
                            generator=torch.Generator().manual_seed(self.stream.data.seed))
        return iter(loader)

    def __iter__(self) -> Iterator[dict]:
        before = self.skipped
        batches = self._source()
        try:
            for batch in batches:
                self._check_shortfall(batch.pop("shortfall"))
                self.skipped += int(batch.pop("skipped"))
                if "views" in batch:  # DataLoader's default_convert turns the tuple into a list
                    batch["views"] = tuple(batch["views"])
                yield batch
        except DatasetError as err:  # from a worker, DataLoader prepends the worker's traceback
            raise DatasetError(str(err).rstrip().splitlines()[-1].split("DatasetError: ", 1)[-1]) from None
        finally:
            # An error's traceback keeps the iterator alive past this pass, and its workers ignore
            # SIGTERM, so the exit handler of multiprocessing would wait on them forever.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        self.stream.skip_batches = 0  # a resume offset applies to one pass only
        if self.skipped > before:
            log.warning("epoch %d, rank %d: %d corrupt or missing samples skipped (batch count unchanged)",
                        self.epoch, self.stream.rank, self.skipped - before)


class ShardShortfallError(MlcdistError):
    """A shard delivered fewer samples than ``dataset.json`` promises (and no ``data.allow_missing``)."""


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers ignore SIGINT/SIGTERM: Ctrl-C and SLURM signal the whole process group,
    and the main process must finish its step and checkpoint (``mlcdist/train/preempt.py``) on batches
    the workers still deliver. The workers end with the main process as usual."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
