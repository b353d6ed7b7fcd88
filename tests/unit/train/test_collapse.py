"""Collapse guard: the mean pairwise cosine on known inputs, and the trainer's once-only warning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mlcdist.train.collapse import CollapseGuard, mean_pairwise_cosine, uniform_loss
from mlcdist.config import from_dict
from mlcdist.data.encode import npy_bytes
from mlcdist.data.records import EncodedSample
from mlcdist.data.shards import write_dataset
from mlcdist.train import Trainer

DIM, CLASSES, SAMPLES = 12, 5, 96


def loop_mean_cosine(z: torch.Tensor) -> float:
    """Float64 reference: average of cos(z_i, z_j) over all ordered pairs i != j."""
    z = z.double()
    total, b = 0.0, z.shape[0]
    for i in range(b):
        for j in range(b):
            if i != j:
                total += float(z[i] @ z[j] / (z[i].norm() * z[j].norm()))
    return total / (b * (b - 1))


def test_mean_pairwise_cosine_known_inputs():
    same = torch.tensor([[1.0, 2.0, 3.0]]).repeat(5, 1) * torch.arange(1, 6.0)[:, None]  # one direction
    assert float(mean_pairwise_cosine(same)) == pytest.approx(1.0, abs=1e-6)
    orthogonal = torch.eye(4)
    assert float(mean_pairwise_cosine(orthogonal)) == pytest.approx(0.0, abs=1e-7)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert float(mean_pairwise_cosine(opposite)) == pytest.approx(-1.0, abs=1e-6)
    z = torch.randn(9, 6, generator=torch.Generator().manual_seed(0))
    assert float(mean_pairwise_cosine(z)) == pytest.approx(loop_mean_cosine(z), abs=1e-6)
    with pytest.raises(ValueError):
        mean_pairwise_cosine(torch.randn(1, 4))
    assert uniform_loss(64 + 512) == pytest.approx(math.log(576))


def test_guard_fires_once_after_consecutive_windows():
    guard = CollapseGuard(threshold=0.95, windows=3)
    fired = [guard.update(c) for c in [0.99, 0.99, 0.5, 0.99, 0.99, 0.99, 0.99, 0.2, 0.99, 0.99, 0.99]]
    assert fired == [False] * 5 + [True] + [False] * 5


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "train"
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(CLASSES, DIM))
    samples = []
    for i in range(SAMPLES):
        labels = sorted(set(rng.choice(CLASSES, size=rng.integers(1, 3), replace=False).tolist()))
        x = centers[labels].sum(0) + 0.3 * rng.normal(size=DIM)
        samples.append(EncodedSample("npy", npy_bytes(x), labels, f"s{i}"))
    write_dataset(samples, out, name="toy", class_names=[f"c{j}" for j in range(CLASSES)], modality="vector",
                  feature_dim=DIM, max_samples_per_shard=48)
    return out


def run(shards: Path, run_dir: Path, optim: dict, capsys) -> tuple[list[dict], str]:
    cfg = from_dict({
        "data": {"train": str(shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 16},
        "augment": {"mask_ratio": 0.2},
        "model": {"arch": "mlp", "mlp_dims": [32, 32], "dropout": 0.0, "head_dims": [32, 16], "momentum": 0.9},
        "queue": {"size": 32},
        "optim": optim,
        "schedule": {"epochs": 8, "kind": "cosine", "warmup_epochs": 0},
        "checkpoint": {"every_epochs": 0, "keep_last": 1, "resume": "auto"},
        "logging": {"run_dir": str(run_dir), "progress": False, "every_steps": 2},
    })
    Trainer(cfg).fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], capsys.readouterr().err  # step records


def test_collapsing_run_warns_once_and_healthy_run_does_not(shards, tmp_path, capsys):
    records, err = run(shards, tmp_path / "collapse", {"name": "sgd", "lr": 20.0, "momentum": 0.9,
                                                        "weight_decay": 0.0}, capsys)
    assert all("query_cosine" in r and "ln_candidates" in r for r in records)
    assert err.count("embeddings collapsed") == 1
    assert sum(bool(r.get("collapse_warning")) for r in records) == 1
    records, err = run(shards, tmp_path / "healthy", {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}, capsys)
    assert "embeddings collapsed" not in err
    assert max(r["query_cosine"] for r in records[3:]) < 0.95
