"""A toy vector data set (12-d, 5 classes, 80 samples in uneven shards) and a tiny MLP recipe
for trainer-level tests; the ``shards`` fixture (tests/conftest.py) writes it once per module.

Pretraining holds out the 8 rows of eval's validation carve (``data.hold_out_val``, 10%, seed 0),
so an epoch reads the other ``KEPT = 72``: 9 steps of batch 8."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlcdist.data.encode import npy_bytes
from mlcdist.data.records import EncodedSample
from mlcdist.data.shards import write_dataset

DIM, CLASSES, SAMPLES = 12, 5, 80
KEPT = SAMPLES - 8  # what pretraining reads per epoch (the validation carve held out)
SHARD_SIZES = (25, 25, 25, 5)


def write_toy_shards(out: Path) -> Path:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(CLASSES, DIM))
    samples = []
    for i in range(SAMPLES):
        labels = sorted(set(rng.choice(CLASSES, size=rng.integers(1, 3), replace=False).tolist()))
        x = centers[labels].sum(0) + 0.3 * rng.normal(size=DIM)
        samples.append(EncodedSample("npy", npy_bytes(x), labels, f"s{i}"))
    write_dataset(samples, out, name="toy", class_names=[f"c{j}" for j in range(CLASSES)], modality="vector",
                  feature_dim=DIM, max_samples_per_shard=25)  # uneven shards: SHARD_SIZES
    return out


def recipe(shards: Path, run_dir: Path, **sections) -> dict:
    data = {
        "data": {"train": str(shards), "batch_size": 8, "num_workers": 0, "shuffle_buffer": 16},
        "augment": {"mask_ratio": 0.3},
        "model": {"arch": "mlp", "mlp_dims": [16, 16], "dropout": 0.1, "head_dims": [16, 8], "momentum": 0.9},
        "queue": {"size": 20},
        "optim": {"name": "adam", "lr": 0.003, "weight_decay": 0.0},
        "schedule": {"epochs": 3, "kind": "cosine", "warmup_epochs": 0.5},
        "checkpoint": {"every_epochs": 1, "keep_last": 2, "resume": "auto"},
        "logging": {"run_dir": str(run_dir), "progress": False, "every_steps": 2},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data
