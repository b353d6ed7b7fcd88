"""Runs a few real Trainer steps on fixed global batches; launched by tests/e2e/test_distributed.py.

    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 tests/support/dist_worker.py OUT.pt [key=value ...]

Every rank takes its slice of the same global batches, so N processes x batch b see exactly the
samples 1 process x batch N*b sees. Rank 0 saves the final query/key weights and losses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mlcdist.data.batch import DecodedViews
from mlcdist.config import from_dict
from mlcdist.data.info import DatasetInfo
from mlcdist.parallel import full_state_dict
from mlcdist.train import Trainer
from teardown import end_worker  # a sibling: torchrun runs this file as a script

GLOBAL_BATCH, STEPS, DIM, CLASSES = 8, 4, 12, 5


class SliceLoader(DecodedViews):
    """The rank's slice of fixed global batches (vector views and multi-hot labels)."""

    def __init__(self, rank: int, world: int):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(STEPS, GLOBAL_BATCH, 2, DIM, generator=g)
        self.y = (torch.rand(STEPS, GLOBAL_BATCH, CLASSES, generator=g) < 0.4).float()
        per = GLOBAL_BATCH // world
        self.sl = slice(rank * per, (rank + 1) * per)
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.skip = skip_batches

    def __len__(self) -> int:
        return STEPS

    def __iter__(self):
        for i in range(self.skip, STEPS):
            x = self.x[i, self.sl]
            yield {"views": (x[:, 0], x[:, 1]), "labels": self.y[i, self.sl]}


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    info = DatasetInfo(name="synthetic", modality="vector", num_classes=CLASSES,
                       class_names=[str(i) for i in range(CLASSES)], class_counts=[0] * CLASSES,
                       num_samples=GLOBAL_BATCH * STEPS, label_cardinality=2.0, shards=[], feature_dim=DIM)
    data: dict = {
        "model": {"arch": "mlp", "mlp_dims": [16, 16], "dropout": 0.0, "head_dims": [16, 8], "head_bn": False,
                  "momentum": 0.9},  # head BN: per-rank statistics differ from one process
        "loss": {"kind": "mulsupcon", "temperature": 0.2},
        "queue": {"size": 12},
        "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0},
        "schedule": {"epochs": 1, "kind": "constant"},
        "checkpoint": {"resume": None, "every_epochs": 0},
        "logging": {"run_dir": str(out.parent / f"run-{out.stem}"), "progress": False, "every_steps": 1},
    }
    for item in overrides:
        key, value = item.split("=", 1)
        section, field = key.split(".")
        data.setdefault(section, {})[field] = type_of(value)
    trainer_cfg = from_dict(data)

    rank = int(__import__("os").environ.get("RANK", 0))
    world = int(__import__("os").environ.get("WORLD_SIZE", 1))
    trainer_cfg.data.batch_size = GLOBAL_BATCH // world
    trainer = Trainer(trainer_cfg, info=info, loader=SliceLoader(rank, world))
    losses = []
    for _ in range(STEPS):
        summary = trainer.fit(stop_at_step=trainer.step + 1)
        losses.append(summary["loss"])
    query = full_state_dict(trainer.acc, trainer.strategy, trainer.query)
    key = full_state_dict(trainer.acc, trainer.strategy, trainer.key)
    if trainer.acc.is_main_process:
        torch.save({"query": query, "key": key, "losses": torch.tensor(losses),
                    "queue": trainer.queue.state_dict()}, out)
    end_worker()


def type_of(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


if __name__ == "__main__":
    main()
