"""Two real Trainer steps per (architecture, precision) combination under one backend.

    ACCELERATE_USE_CPU=true [ACCELERATE_USE_FSDP=true | ACCELERATE_USE_DEEPSPEED=true
        ACCELERATE_DEEPSPEED_ZERO_STAGE=N] torchrun --nproc_per_node 2 \\
        tests/support/dist_precision_worker.py OUT.pt resnet18:no resnet18:bf16 vit:fp16 ...

One launch loops over several combinations (process start and DeepSpeed init dominate), each
with a fresh Trainer on the image recipe's model: torchvision ResNet-18 (BatchNorm backbone)
or ``vit``: a small torchvision ViT (2 blocks, width 64) standing in for ``vit_b_16``
(``resnet50`` and the real ``vit_b_16`` are accepted too, for a GPU), all with the BN
projection head (``head_bn: true``), shuffle-BN keys, momentum encoder and queue, at 64 px
(at 32 px ResNet-18's last stage is 1 x 1 and its BN over 4 samples turns bf16 rounding into
a 14% feature difference). ``PRECISION_SIZE`` / ``PRECISION_LR`` change size and SGD lr.
Every rank takes its slice of the same fixed global batches. Rank 0 saves, per combination,
the step losses, the full query/key weights and the wall time; a combination that raises is
recorded as an error (the matrix goes on) so the test can name it.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torchvision
import torch.distributed as dist

from mlcdist.data.batch import DecodedViews
from mlcdist.config import from_dict
from mlcdist.data.info import DatasetInfo
from mlcdist.models import backbones
from mlcdist.parallel import full_state_dict
from mlcdist.train import Trainer
from teardown import end_worker  # a sibling: torchrun runs this file as a script

GLOBAL_BATCH, STEPS, CLASSES = 8, 2, 5
SIZE = int(os.environ.get("PRECISION_SIZE", "64"))
ARCHS = {"resnet18": "resnet18", "resnet50": "resnet50", "vit": "vit_b_16", "vit_b_16": "vit_b_16"}
SMALL_VIT = dict(patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128)


@contextmanager
def small_vit():
    """``model.arch=vit_b_16`` builds torchvision's VisionTransformer at a test size meanwhile."""
    saved = backbones.FEATURE_WIDTHS["vit_b_16"], backbones.torchvision.models.vit_b_16
    backbones.FEATURE_WIDTHS["vit_b_16"] = SMALL_VIT["hidden_dim"]
    backbones.torchvision.models.vit_b_16 = (
        lambda weights=None, image_size=224: torchvision.models.VisionTransformer(image_size=image_size,
                                                                                 **SMALL_VIT))
    try:
        yield
    finally:
        backbones.FEATURE_WIDTHS["vit_b_16"], backbones.torchvision.models.vit_b_16 = saved


class SliceLoader(DecodedViews):
    """The rank's slice of fixed global batches of two 3 x SIZE x SIZE views (64 px) and multi-hot labels."""

    def __init__(self, rank: int, world: int):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(STEPS, GLOBAL_BATCH, 2, 3, SIZE, SIZE, generator=g)
        self.y = (torch.rand(STEPS, GLOBAL_BATCH, CLASSES, generator=g) < 0.4).float()
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


def recipe(arch: str, precision: str, run_dir: Path) -> dict:
    return {
        "model": {"arch": ARCHS[arch], "head_dims": [32, 16],
                  "head_bn": True, "momentum": 0.9, "key_bn": "shuffle"},
        "augment": {"image_size": SIZE},
        "loss": {"kind": "mulsupcon", "temperature": 0.2},
        "queue": {"size": 16},
        "optim": {"name": "sgd", "lr": float(os.environ.get("PRECISION_LR", "0.005")), "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"epochs": 1, "kind": "constant"},
        "precision": {"mixed": precision},
        "checkpoint": {"resume": None, "every_epochs": 0},
        "logging": {"run_dir": str(run_dir), "progress": False, "every_steps": 1},
    }


def run_combo(arch: str, precision: str, run_dir: Path, rank: int, world: int) -> dict:
    cfg = from_dict(recipe(arch, precision, run_dir))
    cfg.data.batch_size = GLOBAL_BATCH // world
    info = DatasetInfo(name="synthetic-images", modality="image", num_classes=CLASSES,
                       class_names=[str(i) for i in range(CLASSES)], class_counts=[0] * CLASSES,
                       num_samples=GLOBAL_BATCH * STEPS, label_cardinality=2.0, shards=[])
    start = time.perf_counter()
    with small_vit() if arch == "vit" else nullcontext():
        trainer = Trainer(cfg, info=info, loader=SliceLoader(rank, world))
    losses = [trainer.train_step(batch) for batch in trainer.loader]
    losses = torch.stack([v.float().cpu() for v in losses])
    query = full_state_dict(trainer.acc, trainer.strategy, trainer.query)
    key = full_state_dict(trainer.acc, trainer.strategy, trainer.key)
    return {"losses": losses, "query": query, "key": key, "seconds": time.perf_counter() - start,
            "strategy": trainer.strategy.value, "world": world}


def main() -> None:
    out, combos = Path(sys.argv[1]), sys.argv[2:]
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    results: dict = {}
    for combo in combos:
        arch, precision = combo.split(":")
        try:
            results[combo] = run_combo(arch, precision, out.parent / f"run-{out.stem}-{arch}-{precision}",
                                       rank, world)
        except Exception as err:  # recorded, so one failure does not hide the rest of the matrix
            results[combo] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            if rank == 0:
                traceback.print_exc()
        if dist.is_initialized():
            dist.barrier()
    if rank == 0:
        torch.save(results, out)
    end_worker()


if __name__ == "__main__":
    main()
