"""Read pipeline: epoch arithmetic (pure) and loaders over tiny uneven shards written here."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch

from support.shardgen import write_split

from mlcdist.config import AugmentConfig, DataConfig
from mlcdist.data.loaders import make_loader
from mlcdist.data.pipeline import ShardShortfallError, multi_hot, resolve
from mlcdist.data.plan import (
    batches_per_rank, plan_worker, segments_between, shard_order, worker_batches, worker_skip)

SIZES = [7, 1, 13, 4]  # N = 25, deliberately uneven
AUG = AugmentConfig(image_size=16)


def data_cfg(**kw) -> DataConfig:
    base = dict(batch_size=3, num_workers=2, shuffle_buffer=5, seed=3)
    return DataConfig(**{**base, **kw})


def loaders(location, data, mode="pretrain", world=2, **kw):
    return [make_loader(str(location), data, AUG, mode=mode, rank=r, world_size=world, **kw) for r in range(world)]


def positions(sizes, plan):
    """Global (dataset.json order) indices a worker plan reads, in order."""
    starts = np.cumsum([0] + list(sizes))
    return [int(starts[s.shard]) + p for s in plan.segments for p in range(s.start, s.stop)]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    out = tmp_path_factory.mktemp("vec")
    return out, write_split(out, SIZES, modality="vector", feature_dim=8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("img")
    return out, write_split(out, SIZES, corrupt=[5])


# --- plan.py: pure arithmetic ----------------------------------------------------------------

@pytest.mark.parametrize("sizes,world,batch,workers", [
    (SIZES, 2, 3, 2), (SIZES, 3, 2, 3), ([5], 1, 5, 4), ([100, 3, 50, 1, 1], 4, 7, 3), ([2, 2], 3, 1, 2)])
def test_plan_train_and_eval_partition(sizes, world, batch, workers):
    n = sum(sizes)
    for mode in ("train", "eval"):
        b = batches_per_rank(n, world, batch, mode)
        assert b == (n // (world * batch) if mode == "train" else -(-n // (world * batch)))
        seen = []
        for r in range(world):
            plans = [plan_worker(sizes, mode=mode, seed=1, epoch=2, rank=r, world_size=world,
                                 batch_size=batch, num_workers=workers, worker=w) for w in range(workers)]
            assert sum(p.batches for p in plans) == b  # every rank: the same count
            for p in plans:
                assert len(positions(sizes, p)) + p.padding == p.batches * batch
                seen += positions(sizes, p)
        if mode == "eval":
            assert sorted(seen) == list(range(n))  # every sample exactly once
        else:
            assert len(seen) == len(set(seen)) == world * b * batch


def test_plan_worker_counts_and_skip():
    assert [worker_batches(10, 4, w) for w in range(4)] == [3, 3, 2, 2]
    assert [worker_skip(5, 10, 4, w) for w in range(4)] == [2, 1, 1, 1]  # rank batches 0..4
    assert [worker_skip(99, 10, 4, w) for w in range(4)] == [3, 3, 2, 2]


def test_plan_shard_order_and_segments():
    assert shard_order(6, 0, 0, shuffle=False) == list(range(6))
    orders = {tuple(shard_order(6, 0, e, shuffle=True)) for e in range(5)}
    assert len(orders) > 1 and all(sorted(o) == list(range(6)) for o in orders)
    assert shard_order(6, 0, 3, True) == shard_order(6, 0, 3, True)
    segs = segments_between([7, 1, 13, 4], [2, 0, 3, 1], 10, 22)
    assert [(s.shard, s.start, s.stop) for s in segs] == [(2, 10, 13), (0, 0, 7), (3, 0, 2)]
    segs = segments_between([7, 1, 13, 4], [2, 0, 3, 1], 5, 15)
    assert [(s.shard, s.start, s.stop) for s in segs] == [(2, 5, 13), (0, 0, 2)]


def test_multi_hot():
    y = multi_hot([[0, 3], [], [4]], 5)
    assert y.tolist() == [[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]


# --- loaders ------------------------------------------------------------------------------------

def test_eval_covers_every_sample_once_with_content(vectors):
    root, truth = vectors
    got = {}
    counts = []
    for loader in loaders(root, data_cfg(), mode="eval"):
        batches = list(loader)
        counts.append(len(batches))
        assert len(batches) == len(loader) == -(-25 // 6)
        for b in batches:
            assert b["input"].shape == (3, 8) and b["labels"].shape == (3, 5)
            assert (b["index"][~b["valid"]] == -1).all() and (b["input"][~b["valid"]] == 0).all()
            for i, x, y in zip(b["index"][b["valid"]].tolist(), b["input"][b["valid"]], b["labels"][b["valid"]]):
                assert i not in got
                got[i] = (x, y)
    assert counts[0] == counts[1]
    assert sorted(got) == sorted(truth)
    for i, (x, y) in got.items():
        assert torch.equal(x, torch.tensor(i + np.arange(8) / 100.0, dtype=torch.float32))
        assert torch.nonzero(y).flatten().tolist() == truth[i][0]


def test_train_equal_counts_no_duplicates(vectors):
    root, truth = vectors
    data = data_cfg()
    all_idx = []
    for loader in loaders(root, data):
        batches = list(loader)
        assert len(batches) == len(loader) == 25 // 6
        for b in batches:
            v1, v2 = b["views"]
            assert v1.shape == v2.shape == (3, 8)
            labels = [torch.nonzero(row).flatten().tolist() for row in b["labels"]]
            assert labels == [truth[i][0] for i in b["index"].tolist()]
            all_idx += b["index"].tolist()
    assert len(all_idx) == len(set(all_idx)) == 2 * 4 * 3


def test_vector_views_mask_half(vectors):
    root, _ = vectors
    batch = next(iter(make_loader(str(root), data_cfg(num_workers=0, batch_size=6), AUG, mode="pretrain")))
    x = torch.stack([torch.tensor(i + np.arange(8) / 100.0, dtype=torch.float32) for i in batch["index"].tolist()])
    v1, v2 = batch["views"]
    for v in (v1, v2):
        assert ((v == 0) | (v == x)).all()  # masking only zeroes entries
        rows = batch["index"] != 0  # sample 0 has a genuine zero at entry 0
        assert ((v[rows] == 0).sum(1) == 4).all()
    assert not torch.equal(v1, v2)


def test_epoch_changes_order_and_is_reproducible(vectors):
    root, _ = vectors
    loader = make_loader(str(root), data_cfg(), AUG, mode="pretrain", rank=0, world_size=2)
    order = lambda: torch.cat([b["index"] for b in loader]).tolist()  # noqa: E731
    first, again = order(), order()
    loader.set_epoch(1)
    assert first == again and order() != first


def test_resampled_counts(vectors):
    root, truth = vectors
    for loader in loaders(root, data_cfg(resampled=True, batch_size=2)):
        batches = list(loader)
        assert len(batches) == len(loader) == 25 // 4
        assert all(b["index"].shape == (2,) and set(b["index"].tolist()) <= set(truth) for b in batches)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("skip,workers", [(3, 2), (4, 2), (1, 3)])
def test_skip_batches_gives_the_exact_tail(images, skip, workers):
    root, _ = images
    data = data_cfg(batch_size=2, shuffle_buffer=4, num_workers=workers)
    full = list(make_loader(str(root), data, AUG, mode="pretrain", rank=1, world_size=2, epoch=2))
    loader = make_loader(str(root), data, AUG, mode="pretrain", rank=1, world_size=2, epoch=2, skip_batches=skip)
    tail = list(loader)
    assert len(full) == len(loader) == 6 and len(tail) == 6 - skip
    assert len(list(loader)) == 6  # the resume offset applies to one pass only
    for a, b in zip(full[skip:], tail):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["labels"], b["labels"])
        assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))


def test_corrupt_image_skipped_counted_batch_count_fixed(images, caplog):
    root, truth = images
    caplog.set_level(logging.WARNING, "mlcdist.data")
    data = data_cfg(num_workers=0, batch_size=5)
    train = make_loader(str(root), data, AUG, mode="pretrain", rank=0, world_size=1)
    batches = list(train)
    assert len(batches) == 5 and train.skipped == 1
    assert "000000005" in caplog.text
    idx = torch.cat([b["index"] for b in batches]).tolist()
    assert 5 not in idx and len(idx) == 25  # hole refilled from the same batch
    for b in batches:
        v1, v2 = b["views"]
        assert v1.shape == (5, 3, 16, 16) and v1.dtype == torch.float32 and not torch.equal(v1, v2)
    ev = make_loader(str(root), data, AUG, mode="eval", rank=0, world_size=1)
    valid = {i for b in ev for i, ok in zip(b["index"].tolist(), b["valid"].tolist()) if ok}
    assert valid == set(truth) - {5} and ev.skipped == 1


def test_brace_pattern_and_bad_location(vectors, tmp_path):
    root, _ = vectors
    info, shards = resolve(f"{root}/shard-{{000001..000002}}.tar")
    assert shards.sizes == (1, 13) and shards.offsets == (7, 8) and info.num_samples == 14
    ev = make_loader(f"{root}/shard-{{000001..000002}}.tar", data_cfg(), AUG, mode="eval", rank=0, world_size=1)
    assert sorted(i for b in ev for i in b["index"][b["valid"]].tolist()) == list(range(7, 21))
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        make_loader(str(tmp_path), data_cfg(), AUG, mode="eval")
    with pytest.raises(ValueError, match="no full batch"):
        make_loader(str(root), data_cfg(batch_size=20), AUG, mode="pretrain", rank=0, world_size=2)


def test_missing_shard_keeps_batch_count(tmp_path, caplog):
    write_split(tmp_path, [6, 6], modality="vector")
    (tmp_path / "shard-000001.tar").unlink()
    loader = make_loader(str(tmp_path), data_cfg(num_workers=0, batch_size=2, allow_missing=True), AUG,
                         mode="eval", rank=0, world_size=1)
    batches = list(loader)
    assert len(batches) == 6 and loader.skipped == 6
    assert Counter(torch.cat([b["valid"] for b in batches]).tolist()) == {True: 6, False: 6}


def test_rank_and_world_default_to_the_process_group(vectors, monkeypatch):
    from mlcdist.data import loaders

    monkeypatch.setattr(loaders, "world", lambda: (1, 2))  # what parallel.collectives.world says
    loader = make_loader(str(vectors[0]), data_cfg(), AUG, mode="eval")
    assert (loader.stream.rank, loader.stream.world_size) == (1, 2)
    loader = make_loader(str(vectors[0]), data_cfg(), AUG, mode="eval", rank=0, world_size=1)
    assert (loader.stream.rank, loader.stream.world_size) == (0, 1)


@pytest.mark.parametrize("mode,workers", [("pretrain", 2), ("eval", 0)])
def test_short_shard_stops_naming_it_unless_allow_missing(tmp_path, mode, workers):
    write_split(tmp_path, [6, 6], modality="vector")
    index = json.loads((tmp_path / "dataset.json").read_text())
    index["shards"][1]["num_samples"] = 8  # the shard holds 6: two promised samples never come
    index["num_samples"] = 14
    (tmp_path / "dataset.json").write_text(json.dumps(index))
    strict = make_loader(str(tmp_path), data_cfg(num_workers=workers, batch_size=2), AUG, mode=mode,
                         rank=0, world_size=1)
    with pytest.raises(ShardShortfallError, match=r"shard-000001\.tar: has 6 samples, dataset.json "
                                                  r"promises at least 8.*data\.allow_missing=true"):
        list(strict)
    lenient = make_loader(str(tmp_path), data_cfg(num_workers=workers, batch_size=2, allow_missing=True),
                          AUG, mode=mode, rank=0, world_size=1)
    assert len(list(lenient)) == 7 and lenient.skipped == 2
