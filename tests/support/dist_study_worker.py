"""Two real Trainer steps per study loss (kind:candidates) under one backend, on tiny vectors.

    ACCELERATE_USE_CPU=true [ACCELERATE_USE_FSDP=true | ACCELERATE_USE_DEEPSPEED=true
        ACCELERATE_DEEPSPEED_ZERO_STAGE=N] torchrun --nproc_per_node 2 \\
        tests/support/dist_study_worker.py OUT.pt jaccard:moco reg:batch asl:moco ...

One launch loops over the cases (process start dominates), each with a fresh Trainer on the MLP of
tests/support/dist_worker.py (no batch norm, no dropout: N processes equal one exactly). Every rank
takes its slice of the same fixed global batches; the queue (12 slots) is part full at step 2, so
the valid mask matters. Rank 0 saves, per case, the step losses, the full query (prototypes
included) and key weights and the queue; a case that raises is recorded as an error.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from mlcdist.config import from_dict
from mlcdist.data.batch import DecodedViews
from mlcdist.data.info import DatasetInfo
from mlcdist.parallel import full_state_dict
from mlcdist.train import Trainer
from teardown import end_worker  # a sibling: torchrun runs this file as a script

GLOBAL_BATCH, STEPS, DIM, CLASSES = 8, 2, 12, 5
HYPER = {"msc": {"alpha": 0.5, "beta": 0.3}, "reg": {"alpha": 0.5}, "reg_plain": {"alpha": 0.5},
         "asl": {"gamma_neg": 2.0, "gamma_pos": 1.0, "clip": 0.05}}


class SliceLoader(DecodedViews):
    """The rank's slice of fixed global batches (two vector views, multi-hot labels, one empty row)."""

    def __init__(self, rank: int, world: int):
        g = torch.Generator().manual_seed(4321)
        self.x = torch.randn(STEPS, GLOBAL_BATCH, 2, DIM, generator=g)
        self.y = (torch.rand(STEPS, GLOBAL_BATCH, CLASSES, generator=g) < 0.4).float()
        self.y[:, 5] = 0  # a sample without labels: skipped as an anchor, still a candidate
        per = GLOBAL_BATCH // world
        self.sl = slice(rank * per, (rank + 1) * per)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        pass

    def __len__(self) -> int:
        return STEPS

    def __iter__(self):
        for i in range(STEPS):
            x = self.x[i, self.sl]
            yield {"views": (x[:, 0], x[:, 1]), "labels": self.y[i, self.sl]}


def recipe(kind: str, candidates: str, run_dir: Path) -> dict:
    return {
        "model": {"arch": "mlp", "mlp_dims": [16, 16], "dropout": 0.0, "head_dims": [16, 8], "head_bn": False,
                  "momentum": 0.9},
        "loss": {"kind": kind, "temperature": 0.2, "candidates": candidates, **HYPER.get(kind, {})},
        "queue": {"size": 12},
        "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-3},  # prototypes decay too
        "schedule": {"epochs": 1, "kind": "constant"},
        "checkpoint": {"resume": None, "every_epochs": 0},
        "logging": {"run_dir": str(run_dir), "progress": False, "every_steps": 1},
    }


def run_case(kind: str, candidates: str, run_dir: Path, rank: int, world: int) -> dict:
    cfg = from_dict(recipe(kind, candidates, run_dir))
    cfg.data.batch_size = GLOBAL_BATCH // world
    info = DatasetInfo(name="synthetic", modality="vector", num_classes=CLASSES,
                       class_names=[str(i) for i in range(CLASSES)], class_counts=[0] * CLASSES,
                       num_samples=GLOBAL_BATCH * STEPS, label_cardinality=2.0, shards=[], feature_dim=DIM)
    trainer = Trainer(cfg, info=info, loader=SliceLoader(rank, world))
    losses = torch.stack([trainer.train_step(batch).float().cpu() for batch in trainer.loader])
    return {"losses": losses, "query": full_state_dict(trainer.acc, trainer.strategy, trainer.query),
            "key": full_state_dict(trainer.acc, trainer.strategy, trainer.key),
            "queue": trainer.queue.state_dict(), "strategy": trainer.strategy.value}


def main() -> None:
    out, cases = Path(sys.argv[1]), sys.argv[2:]
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    results: dict = {}
    for case in cases:
        kind, candidates = case.split(":")
        try:
            results[case] = run_case(kind, candidates, out.parent / f"run-{out.stem}-{kind}-{candidates}",
                                     rank, world)
        except Exception as err:  # recorded, so one failure does not hide the other cases
            results[case] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            if rank == 0:
                traceback.print_exc()
        if dist.is_initialized():
            dist.barrier()
    if rank == 0:
        torch.save(results, out)
    end_worker()


if __name__ == "__main__":
    main()
