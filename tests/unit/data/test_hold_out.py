"""Pretraining leaves out the validation carve (data/split.py): no epoch of any rank, worker,
plan mode or loader reads a held-out row, every rank still gets its exact batch count, and the
resident loader's batches stay the streaming loader's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support.shardgen import write_split

from mlcdist.config import AugmentConfig, DataConfig
from mlcdist.data.loaders import make_loader
from mlcdist.data.plan import batches_per_rank, plan_worker
from mlcdist.data.split import HeldOut, carve_mask, pretraining_hold_out

SIZES = [11, 3, 17, 9]  # N = 40, deliberately uneven
OFFSETS = [0, 11, 14, 31]
AUG = AugmentConfig(mask_ratio=0.5)
HOLD = (0.25, 7)  # 10 of 40 rows


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    out = tmp_path_factory.mktemp("vec")
    write_split(out, SIZES, modality="vector", feature_dim=6)
    return out


def epoch_indices(location, data, *, mode, world, resident, epoch=0, hold_out=HOLD):
    """Every rank's batches of one epoch: (per-rank batch counts, all real indices read)."""
    counts, seen = [], []
    for rank in range(world):
        loader = make_loader(str(location), data, AUG, mode=mode, rank=rank, world_size=world, epoch=epoch,
                             resident=resident, hold_out=hold_out)
        batches = list(loader)
        counts.append((len(batches), len(loader)))
        for batch in batches:
            index = batch["index"] if mode == "pretrain" else batch["index"][batch["valid"]]
            seen.extend(index.tolist())
    return counts, np.asarray(seen)


def test_carve_mask_is_seeded_and_sized():
    a = carve_mask(40, 0.25, 7)
    assert a.dtype == torch.bool and int(a.sum()) == 10 and torch.equal(a, carve_mask(40, 0.25, 7))
    assert not torch.equal(a, carve_mask(40, 0.25, 8))


def test_held_out_maps_kept_slices_to_shard_slices():
    mask = np.zeros(40, dtype=bool)
    mask[[0, 1, 5, 12, 20, 21, 22, 39]] = True
    held = HeldOut.of(mask, SIZES, OFFSETS)
    assert held.kept_sizes == (8, 2, 14, 8) and held.count == 8
    assert held.to_full(0, 0, 2) == (2, 4)  # shard 0 keeps 2, 3, 4, 6, ...
    assert held.to_full(0, 2, 4) == (4, 7) and held.positions(0, 4, 7).tolist() == [4, 6]
    assert held.to_full(1, 0, 0) == (0, 0)


@pytest.mark.parametrize("mode,world,workers,resampled", [
    ("pretrain", 1, 0, False), ("pretrain", 2, 3, False), ("pretrain", 3, 2, False),
    ("pretrain", 2, 2, True), ("eval", 3, 2, False)])
def test_no_epoch_reads_a_held_out_row(vectors, mode, world, workers, resampled):
    data = DataConfig(batch_size=4, num_workers=workers, shuffle_buffer=6, seed=5, resampled=resampled)
    held = set(np.flatnonzero(carve_mask(40, *HOLD).numpy()).tolist())
    expected = batches_per_rank(30, world, 4, "eval" if mode == "eval" else "train")
    for epoch in (0, 3):
        counts, seen = epoch_indices(vectors, data, mode=mode, world=world, resident=False, epoch=epoch)
        assert counts == [(expected, expected)] * world
        assert not held & set(seen.tolist())
        if not resampled:  # a plan reads each kept row at most once per epoch
            assert len(set(seen.tolist())) == len(seen)
        if mode == "eval":  # and eval mode reads every kept row
            assert sorted(seen.tolist()) == sorted(set(range(40)) - held)


@pytest.mark.parametrize("world,workers,resampled", [(1, 0, False), (2, 3, False), (2, 2, True)])
def test_resident_batches_equal_streamed_batches_with_a_hold_out(vectors, world, workers, resampled):
    data = DataConfig(batch_size=4, num_workers=workers, shuffle_buffer=6, seed=5, resampled=resampled)
    for rank in range(world):
        kw = dict(mode="pretrain", rank=rank, world_size=world, epoch=1, hold_out=HOLD)
        streamed = list(make_loader(str(vectors), data, AUG, resident=False, **kw))
        resident = list(make_loader(str(vectors), data, AUG, resident=True, **kw))
        assert len(streamed) == len(resident) > 0
        for a, b in zip(streamed, resident):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["labels"], b["labels"])
            assert all(torch.equal(u, v) for u, v in zip(a["views"], b["views"]))


def test_plan_without_hold_out_is_unchanged():
    """``held=None`` is the old plan exactly; an empty hold-out plans the same rows."""
    nothing = HeldOut.of(np.zeros(40, dtype=bool), SIZES, OFFSETS)
    for worker in range(2):
        kw = dict(mode="train", seed=3, epoch=2, rank=1, world_size=2, batch_size=4, num_workers=2, worker=worker)
        assert plan_worker(SIZES, **kw) == plan_worker(SIZES, **kw, held=nothing)


def test_which_recipes_hold_out():
    recipe = {"data": {"hold_out_val": True, "val": ""}, "eval": {"val_fraction": 0.2, "seed": 3}}
    assert pretraining_hold_out(recipe) == (0.2, 3)
    assert pretraining_hold_out({**recipe, "data": {"hold_out_val": True, "val": "shards/x/val"}}) is None
    assert pretraining_hold_out({**recipe, "data": {"hold_out_val": False}}) is None
    assert pretraining_hold_out({"data": {}, "eval": {}}) is None  # a checkpoint from before the key


def test_the_module_example_runs():
    import doctest

    from mlcdist.data import split

    assert doctest.testmod(split).failed == 0 and doctest.testmod(split).attempted >= 4
