"""Resident vector loading (data/resident.py) delivers the streaming loader's batches exactly:
same batches, same order, same views, for every plan mode, world size, worker count and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from support.shardgen import write_split

from mlcdist.config import AugmentConfig, DataConfig
from mlcdist.data import resident
from mlcdist.data.encode import npy_bytes
from mlcdist.data.loaders import make_loader
from mlcdist.data.pipeline import ShardShortfallError, buffer_shuffle
from mlcdist.data.resident import ResidentLoader, buffered_order

SIZES = [11, 3, 17, 9]  # N = 40, deliberately uneven
AUG = AugmentConfig(mask_ratio=0.5)


def data_cfg(**kw) -> DataConfig:
    return DataConfig(**{**dict(batch_size=4, num_workers=0, shuffle_buffer=6, seed=5), **kw})


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    out = tmp_path_factory.mktemp("vec")
    write_split(out, SIZES, modality="vector", feature_dim=6)
    return out


@pytest.fixture(scope="module")
def holey(tmp_path_factory):
    """Two corrupt payloads (not a .npy; a NaN vector) and a shard promising 2 more than it holds."""
    out = tmp_path_factory.mktemp("holey")
    bad = {5: b"not an npy file", 21: npy_bytes(np.full(6, np.nan))}
    write_split(out, SIZES, modality="vector", feature_dim=6, payloads=bad)
    index = json.loads((out / "dataset.json").read_text())
    index["shards"][1]["num_samples"] += 2
    index["num_samples"] += 2
    (out / "dataset.json").write_text(json.dumps(index))
    return out


def passes(location, data, *, mode, rank, world, resident_, epoch=0, skip=0):
    loader = make_loader(str(location), data, AUG, mode=mode, rank=rank, world_size=world,
                         epoch=epoch, skip_batches=skip, resident=resident_)
    assert isinstance(loader, ResidentLoader) == resident_
    return list(loader), loader.skipped


def assert_same_batches(streamed, resident_batches):
    assert len(streamed) == len(resident_batches) > 0
    for k, (a, b) in enumerate(zip(streamed, resident_batches)):
        assert a.keys() == b.keys(), k
        for name in a:
            left, right = (a[name], b[name]) if name != "views" else (torch.stack(a[name]), torch.stack(b[name]))
            assert left.dtype == right.dtype and torch.equal(left, right), (k, name)


@pytest.mark.parametrize("mode,world,workers,buffer,resampled", [
    ("pretrain", 1, 0, 6, False), ("pretrain", 2, 3, 6, False), ("pretrain", 3, 2, 1, False),
    ("pretrain", 1, 0, 100, False), ("pretrain", 2, 2, 6, True),
    ("eval", 1, 0, 6, False), ("eval", 3, 2, 6, False)])
@pytest.mark.parametrize("epoch,skip", [(0, 0), (2, 1), (1, 2)])
def test_resident_batches_equal_streamed_batches(vectors, mode, world, workers, buffer, resampled, epoch, skip):
    data = data_cfg(num_workers=workers, shuffle_buffer=buffer, resampled=resampled)
    for rank in range(world):
        kw = dict(mode=mode, rank=rank, world=world, epoch=epoch, skip=skip)
        streamed, _ = passes(vectors, data, resident_=False, **kw)
        held, _ = passes(vectors, data, resident_=True, **kw)
        assert_same_batches(streamed, held)


@pytest.mark.parametrize("mode,world,workers", [("pretrain", 1, 0), ("pretrain", 2, 2), ("eval", 2, 0)])
def test_holes_are_refilled_or_masked_as_when_streaming(holey, mode, world, workers):
    data = data_cfg(num_workers=workers, allow_missing=True)
    total = 0
    for rank in range(world):
        for epoch in (0, 1):
            kw = dict(mode=mode, rank=rank, world=world, epoch=epoch)
            streamed, streamed_skips = passes(holey, data, resident_=False, **kw)
            held, held_skips = passes(holey, data, resident_=True, **kw)
            assert_same_batches(streamed, held)
            assert held_skips == streamed_skips
            total += held_skips
    assert total > 0


def test_missing_samples_stop_at_the_same_batch_unless_allowed(holey):
    loader = make_loader(str(holey), data_cfg(batch_size=2), AUG, mode="eval", rank=0, world_size=1)
    assert isinstance(loader, ResidentLoader)  # the default for small vector sets
    delivered = []
    with pytest.raises(ShardShortfallError, match=r"shard-000001\.tar: has 3 samples, dataset.json promises "
                                                  r"at least 5.*data\.allow_missing=true"):
        for batch in loader:
            delivered.append(batch)
    assert len(delivered) == (11 + 3) // 2  # the batches before the one holding a missing sample


def test_buffered_order_is_buffer_shuffle_with_the_draws_batched():
    for n, size in [(0, 5), (3, 5), (5, 5), (40, 6), (200, 17), (9, 1)]:
        items = list(range(100, 100 + n))
        a, b = np.random.default_rng(n), np.random.default_rng(n)
        assert buffered_order(items, size, a) == list(buffer_shuffle(iter(items), size, b))
        assert a.integers(1 << 40) == b.integers(1 << 40)  # the generator is left in the same state


def test_large_or_image_sets_keep_streaming(vectors, monkeypatch):
    assert isinstance(make_loader(str(vectors), data_cfg(), AUG, mode="eval"), ResidentLoader)
    monkeypatch.setattr(resident, "RESIDENT_MAX_BYTES", 40 * (6 + 5) * 4 - 1)
    assert not isinstance(make_loader(str(vectors), data_cfg(), AUG, mode="eval"), ResidentLoader)


def test_trainer_learns_the_same_from_resident_and_streamed_shards(shards, tmp_path):
    """Same batches, so the same run: a short MoCo pretraining ends with identical weights and queue."""
    from mlcdist.config import from_dict
    from mlcdist.train import Trainer

    from support.vector_run import recipe

    ends = []
    for resident_ in (False, True):
        cfg = from_dict(recipe(shards, tmp_path / f"run-{resident_}", data={"num_workers": 1},
                               schedule={"epochs": 2}))
        loader = make_loader(cfg.data.train, cfg.data, cfg.augment, mode="pretrain", resident=resident_)
        trainer = Trainer(cfg, loader=loader)
        trainer.fit()
        ends.append({**{f"q.{k}": v.clone() for k, v in trainer.query.state_dict().items()},
                     **{f"k.{k}": v.clone() for k, v in trainer.key.state_dict().items()},
                     "queue": trainer.queue.keys.clone()})
    assert ends[0].keys() == ends[1].keys()
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
