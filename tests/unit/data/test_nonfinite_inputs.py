"""NaN/inf input vectors: the writer leaves them out, ``verify`` fails on them, the reader skips
and counts them like corrupt images (they used to pass ``verify`` and crash training)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from support.shardgen import npy_bytes, write_split

from mlcdist.config import AugmentConfig, DataConfig
from mlcdist.data.info import load_dataset_info
from mlcdist.data.loaders import make_loader
from mlcdist.data.encode import SampleSpec
from mlcdist.data.shards import write_shards
from mlcdist.data.verify import verify
from tools.make_shards import main

DIM = 8
BAD = {3: np.where(np.arange(DIM) == 2, np.nan, 1.0), 9: np.where(np.arange(DIM) == 0, np.inf, 1.0)}


@pytest.fixture()
def poisoned(tmp_path):
    """Two shards of 6 vectors; sample 3 holds a NaN, sample 9 a +inf."""
    write_split(tmp_path, [6, 6], modality="vector", feature_dim=DIM,
                payloads={k: npy_bytes(v) for k, v in BAD.items()})
    return tmp_path


def test_verify_fails_on_non_finite_vectors(poisoned, capsys, monkeypatch):
    report = verify(poisoned)
    assert not report.ok
    assert report.problems == []  # the bad samples' labels still count: no spurious class-count diff
    found = [p for s in report.shards for p in s.problems if "non-finite" in p]
    assert [p.split(":")[0] for p in found] == ["000000003", "000000009"]
    monkeypatch.setenv("COLUMNS", "400")  # the CLI prints a rich table; keep rows on one line
    assert main(["verify", str(poisoned)]) == 1
    assert "000000003: npy has 1 non-finite values" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["pretrain", "eval"])
def test_reader_skips_and_counts_non_finite_vectors(poisoned, mode):
    data = DataConfig(batch_size=3, num_workers=0, shuffle_buffer=1, seed=0)
    loader = make_loader(str(poisoned), data, AugmentConfig(), mode=mode, rank=0, world_size=1)
    batches = list(loader)
    assert len(batches) == 4 and loader.skipped == 2
    if mode == "eval":
        valid = {i for b in batches for i, ok in zip(b["index"].tolist(), b["valid"].tolist()) if ok}
        assert valid == set(range(12)) - set(BAD)
        assert all(torch.isfinite(b["input"]).all() for b in batches)
    else:
        idx = torch.cat([b["index"] for b in batches]).tolist()
        assert not set(idx) & set(BAD) and len(idx) == 12
        assert all(torch.isfinite(v).all() for b in batches for v in b["views"])


def test_writer_leaves_out_non_finite_vectors(tmp_path):
    vectors = [np.full(DIM, float(i)) for i in range(5)]
    vectors[1][4], vectors[3][0] = np.nan, 1e39  # 1e39 overflows float32 to inf
    specs = [SampleSpec(source=f"row{i}", labels=(i % 2,), vector=v) for i, v in enumerate(vectors)]
    out = tmp_path / "out"
    write_shards(specs, out, ["a", "b"], name="t", modality="vector", feature_dim=DIM, max_samples_per_shard=2)
    info = load_dataset_info(out)
    assert info.num_samples == 3
    assert [(s["source"], s["reason"].split(":")[0]) for s in info.skipped] == \
        [("row1", "non-finite vector"), ("row3", "non-finite vector")]
    assert verify(out).ok


def test_verify_decode_bad_image_gives_no_spurious_class_count_difference(tmp_path):
    """Issue 16 item 8: a corrupt sample was reported twice, once more as class-count differences."""
    write_split(tmp_path, [4, 4], corrupt=[5])
    report = verify(tmp_path, decode_images=True)
    assert report.problems == []
    assert any(p.startswith("000000005") for p in report.shards[1].problems)
