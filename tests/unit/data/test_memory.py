"""In-memory loaders (``mlcdist/data/memory.py``), ``DatasetInfo.for_tensors`` and the
reproduce command line's positional ``KEY=VALUE`` overrides."""

from __future__ import annotations

import pytest
import torch

from mlcdist.data import augment
from mlcdist.data.info import DatasetInfo
from mlcdist.data.memory import TensorEvalLoader, TensorPretrainLoader
from mlcdist.errors import MlcdistError
from mlcdist.seeds import sample_seeds


def rows(n: int = 10, d: int = 6, c: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=g), (torch.rand(n, c, generator=g) < 0.5).float()


def test_pretrain_loader_batches_are_seeded_rows_and_their_masks():
    x, y = rows()
    loader = TensorPretrainLoader(x, y, batch_size=4, mask_ratio=0.5, seed=7)
    loader.set_epoch(3)
    batches = list(loader)
    assert len(loader) == len(batches) == 2  # 10 // 4, the partial batch dropped
    order = torch.randperm(10, generator=torch.Generator().manual_seed(7 * 1_000_003 + 3))[:8]
    first, second = augment.vector_views(x[order], sample_seeds(7, 3, order), 0.5)
    got = torch.cat([b["views"][0] for b in batches]), torch.cat([b["views"][1] for b in batches])
    assert torch.equal(got[0], first) and torch.equal(got[1], second)
    assert torch.equal(torch.cat([b["labels"] for b in batches]), y[order])
    assert (first == 0).sum(1).tolist() == [3] * 8  # round(0.5 * 6) entries masked per row
    loader.set_epoch(3, skip_batches=1)  # exact resume: the same second batch
    (again,) = list(loader)
    assert torch.equal(again["views"][0], batches[1]["views"][0])
    moved = loader.to_device(again, torch.device("cpu"), step=0, micro=0)
    assert torch.equal(moved["labels"], again["labels"])


def test_pretrain_loader_too_few_rows_is_a_user_error():
    x, y = rows(3)
    with pytest.raises(MlcdistError, match="3 training rows give no batch of data.batch_size=4"):
        TensorPretrainLoader(x, y, batch_size=4, mask_ratio=0.5, seed=0)


def test_eval_loader_keeps_order_or_reshuffles_every_pass():
    x, y = rows()
    passes = []
    plain = TensorEvalLoader(x, y, 4, on_epoch=lambda: passes.append(1))
    batches = list(plain)
    assert [len(b["index"]) for b in batches] == [4, 4, 2] and passes == [1]
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(10))
    assert all(b["valid"].all() for b in batches)
    shuffled = TensorEvalLoader(x, y, 4, shuffle_seed=5)
    one, two = (torch.cat([b["index"] for b in shuffled]) for _ in range(2))
    g = torch.Generator().manual_seed(5)
    assert torch.equal(one, torch.randperm(10, generator=g))
    assert torch.equal(two, torch.randperm(10, generator=g)) and not torch.equal(one, two)
    first = next(iter(TensorEvalLoader(x, y, 4, shuffle_seed=5)))
    assert torch.equal(first["input"], x[first["index"]])


def test_dataset_info_for_tensors():
    x, y = rows()
    info = DatasetInfo.for_tensors("toy", ("a", "b", "c"), x, y)
    assert (info.modality, info.num_classes, info.num_samples, info.feature_dim) == ("vector", 3, 10, 6)
    assert info.class_counts == [int(v) for v in y.sum(0)] and info.shards == []
    assert info.label_cardinality == pytest.approx(float(y.sum()) / 10)


def test_reproduce_positional_overrides_and_set_alias():
    from tools.reproduce.command import parse_args

    args = parse_args(["yeast", "model.head_bn=false", "--seeds", "1", "--set", "optim.lr=0.1",
                       "scene"])
    assert args.datasets == ["yeast", "scene"]
    assert args.overrides == ["optim.lr=0.1", "model.head_bn=false"]
    with pytest.raises(SystemExit):
        parse_args(["yeest"])
