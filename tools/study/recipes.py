"""The two recipes of a study run, for any vector data set.

A data set with its own files uses them: ``recipes/NAME.yaml`` (pretraining, with ``loss.kind``
set to the method) and ``recipes/finetune/NAME.yaml``. Any other set is derived from the vector
bases, ``recipes/base/vector.yaml`` and ``recipes/eval/vector_finetune.yaml`` (the paper's MLP,
masking, optimizer and schedule), at the paper's batch size: 32 for sets under 2,000 training
samples, 256 otherwise, with the authors' 256-key queue at batch 32 (8 batches, as in their yeast
and scene configs). So yeast and scene come out exactly as their hand-written recipes, and a new
set needs no file at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mlcdist.config.schema import IN_BATCH_KINDS
from tools.study.data import REPO

RECIPES = REPO / "recipes"
LOG_EVERY = 50  # pretraining steps between logged records (about one per epoch on the Mulan sets)
SMALL_SET = 2000  # the paper: batch 32 below this many training samples, 256 otherwise


def paper_batch(train_rows: int) -> int:
    return 32 if train_rows < SMALL_SET else 256


@dataclass(frozen=True)
class RunRecipes:
    """Recipe files and the overrides that make one run's pretraining and finetune configs."""

    pretrain: str
    pretrain_overrides: tuple[str, ...]
    finetune: str
    finetune_overrides: tuple[str, ...]


def derive(dataset: str, method: str, train_rows: int, candidates: Optional[str] = None,
           batch_size: Optional[int] = None) -> RunRecipes:
    """The recipes of ``method`` (any ``loss.kind``) on ``dataset`` with ``train_rows`` samples.

    ``candidates``: ``batch`` runs the contrastive losses the study's way (one view, in-batch);
    ``None`` keeps the recipe's (MoCo). ``batch_size`` replaces the paper's for both phases."""
    own, own_finetune = RECIPES / f"{dataset}.yaml", RECIPES / "finetune" / f"{dataset}.yaml"
    pre: list[str] = [f"loss.kind={method}"]
    if candidates is not None and method in IN_BATCH_KINDS:
        pre.append(f"loss.candidates={candidates}")
    batch = batch_size or paper_batch(train_rows)
    fine: list[str] = []
    if not own.is_file():
        pre += [f"name={dataset}-{method}", f"data.train=shards/{dataset}/train",
                f"data.test=shards/{dataset}/test", f"data.batch_size={batch}"]
        if batch == 32:
            pre.append("queue.size=256")
    elif batch_size is not None:
        pre.append(f"data.batch_size={batch}")
    if not own_finetune.is_file():
        fine.append(f"eval.batch_size={batch}")
        if batch == 32:
            fine.append("eval.plateau_patience=2")
    elif batch_size is not None:
        fine.append(f"eval.batch_size={batch}")
    return RunRecipes(str(own if own.is_file() else RECIPES / "base" / "vector.yaml"), tuple(pre),
                      str(own_finetune if own_finetune.is_file() else RECIPES / "eval" / "vector_finetune.yaml"),
                      tuple(fine))
