"""Checkpoints in, frozen backbone features out: resolve, rebuild, check, extract, gather, cache.

A pretraining checkpoint (``mlcdist/checkpoint.py`` has its format) is ``RUN/checkpoints/step-NNNNNNNN/state.pt``
holding the query encoder's full state dict (``backbone.*`` + ``head.*``, or ``classifier.*``
for the BCE baseline) and the resolved recipe. Evaluation keeps ``backbone.*`` only: the
projection head (or the baseline's classifier) is dropped, as in the paper.

Distributed extraction. Rank ``r`` of ``R`` reads its eval-mode batches (``make_loader(...,
mode="eval")``: every rank yields the same number of batches ``b`` of size ``B``, padded with
``valid=False`` rows carrying ``index=-1``), so the per-rank outputs are equal-sized
``b*B``-row blocks and an all-gather gives ``R*b*B`` rows. Dropping the invalid rows and
sorting by the global ``index`` yields the dataset order, i.e. exactly the rows one process
produces (up to float rounding of different batch compositions; eval-mode BN is per sample).
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Optional

import torch
from torch import Tensor, nn

from mlcdist import checkpoint
from mlcdist.errors import MlcdistError
from mlcdist.fileio import atomic_write
from mlcdist.models.state import load_state_strict
from mlcdist.parallel import all_gather_rows, all_reduce_sum, world
from mlcdist.progress import length, track

BACKBONE_PREFIX = "backbone."


class EvalInputError(MlcdistError):
    """A checkpoint, recipe or data problem, phrased with the file involved and the fix."""


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What evaluation needs from a ``state.pt``: the recipe, the data shape and the backbone."""

    path: Path  # the state.pt file
    recipe: dict  # the resolved pretraining recipe as plain data
    num_classes: int
    feature_dim: Optional[int]
    arch: str
    loss: str
    backbone_state: dict[str, Tensor]
    class_names: Optional[list[str]] = None  # None: not recorded and the pretraining index is gone
    dataset: str = "?"  # the pretraining data set's name (or its data.train location)

    @property
    def run_dir(self) -> Path:
        """``RUN`` for ``RUN/checkpoints/step-N/state.pt``; else the folder holding the file."""
        step_dir = self.path.parent
        if step_dir.parent.name == "checkpoints":
            return step_dir.parent.parent
        return step_dir


def resolve_checkpoint(location: str | Path) -> Path:
    """The ``state.pt`` that ``location`` names (``mlcdist.checkpoint.resolve``)."""
    return checkpoint.resolve(location)


def load_checkpoint(location: str | Path) -> Checkpoint:
    """Read a trainer checkpoint (``torch.load(weights_only=True)``) and keep the backbone."""
    import yaml

    path = checkpoint.resolve(location)
    state = checkpoint.read(path)
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in state["model"].items()
                if k.startswith(BACKBONE_PREFIX)}
    if not backbone:
        raise EvalInputError(f"{path}: the model state holds no backbone.* weights")
    recipe = yaml.safe_load(state["config"]) or {}
    names, dataset = pretraining_classes(state, recipe)
    return Checkpoint(path=path, recipe=recipe, num_classes=int(state["num_classes"]),
                      feature_dim=None if state["feature_dim"] is None else int(state["feature_dim"]),
                      arch=str(recipe.get("model", {}).get("arch", state.get("arch"))),
                      loss=str(recipe.get("loss", {}).get("kind", state.get("loss"))),
                      backbone_state=backbone, class_names=names, dataset=dataset)


def pretraining_classes(state: dict, recipe: dict) -> tuple[Optional[list[str]], str]:
    """``(class names, data set name)`` of the pretraining data: from the checkpoint, else (older
    checkpoints) from the pretraining ``data.train`` index when it is still readable."""
    if state.get("class_names") is not None:
        return [str(n) for n in state["class_names"]], str(state.get("dataset", "?"))
    from mlcdist.data.info import load_dataset_info

    location = str(recipe.get("data", {}).get("train", ""))
    try:
        info = load_dataset_info(location) if location else None
    except (OSError, ValueError):
        info = None
    return (list(info.class_names), info.name) if info else (None, location or "?")


def load_backbone_state(backbone: nn.Module, ckpt: Checkpoint, arch: str) -> None:
    """Strict load; a mismatch names the checkpoint's and the model's architecture and keys."""
    def error(mismatch: str) -> EvalInputError:
        return EvalInputError(
            f"{ckpt.path}: holds a {ckpt.arch} backbone that does not fit the {arch} model built "
            f"for evaluation ({mismatch}); do not override model.* for a checkpoint")

    load_state_strict(backbone, ckpt.backbone_state, source="checkpoint", error=error)


# ---------------------------------------------------------------------------------------------
# Validation split carved from train
# ---------------------------------------------------------------------------------------------


def carve_validation(num_samples: int, fraction: float, seed: int) -> Tensor:
    """``data.split.carve_mask``: the seeded validation rows, the ones pretraining held out
    (``data.hold_out_val``); too few samples is an :class:`EvalInputError`."""
    from mlcdist.data.info import DatasetError
    from mlcdist.data.split import carve_mask

    try:
        return carve_mask(num_samples, fraction, seed)
    except DatasetError as err:
        raise EvalInputError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# Extraction and gathering
# ---------------------------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """Rows in dataset order: ``features`` N x D float32, ``labels`` N x C, ``index`` N."""

    features: Tensor
    labels: Tensor
    index: Tensor

    def subset(self, rows: Tensor) -> "FeatureSet":
        return FeatureSet(self.features[rows], self.labels[rows], self.index[rows])


@torch.no_grad()
def collect(loader, fn: Callable[[Tensor], tuple[Tensor, ...]], device: torch.device,
            autocast: Callable[[], ContextManager] = nullcontext,
            progress: Optional[str] = None) -> tuple[list[Tensor], Tensor, Tensor]:
    """Run ``fn`` over every eval batch of every rank; returns ``(outputs, labels, index)``
    gathered from all ranks, invalid rows dropped, sorted by global index (module docstring).
    Collective: every rank must call it with its own loader. ``progress`` labels a progress
    display on rank 0 (``mlcdist/progress.py``: a bar on a terminal, else plain lines)."""
    outs: list[list[Tensor]] = []
    labels, index, valid = [], [], []
    show = progress is not None and world()[0] == 0
    batches = track(loader, length(loader) if show else 0, progress or "", enabled=show)
    for batch in batches:
        with autocast():
            result = fn(batch["input"].to(device, non_blocking=True))
        outs.append([r.float().cpu() for r in result])
        labels.append(batch["labels"])
        index.append(batch["index"])
        valid.append(batch["valid"])
    # gloo and NCCL both gather int64; bool is not supported everywhere
    _, size = world()
    gather_device = device if size > 1 else torch.device("cpu")

    def gathered(parts: list[Tensor]) -> Tensor:
        return all_gather_rows(torch.cat(parts).to(gather_device)).cpu()

    keep = gathered([v.to(torch.int64) for v in valid]).bool()
    order_index = gathered(index)[keep]
    order = torch.argsort(order_index)
    columns = [gathered([o[k] for o in outs])[keep][order] for k in range(len(outs[0]))]
    return columns, gathered(labels)[keep][order], order_index[order]


def extract_features(backbone: nn.Module, loader, device: torch.device,
                     autocast: Callable[[], ContextManager] = nullcontext,
                     progress: Optional[str] = None) -> FeatureSet:
    """Backbone features ``h(x)`` of a split, in eval mode, dataset order (collective)."""
    backbone.eval()
    (features,), labels, index = collect(loader, lambda x: (backbone(x),), device, autocast, progress)
    return FeatureSet(features, labels, index)


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def cache_key(checkpoint: Optional[Path], split_location: str, settings: dict) -> str:
    """Hash of the checkpoint file (path, mtime, size; ``None`` for a random encoder), the split
    and the settings that change the features (image size, seed of a random init...)."""
    ident: dict = {"split": os.path.abspath(split_location) if "://" not in split_location
                   else split_location, **settings}
    if checkpoint is not None:
        st = checkpoint.stat()
        ident["checkpoint"] = [str(checkpoint.resolve()), st.st_mtime_ns, st.st_size]
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def save_features(features: FeatureSet, path: Path) -> None:
    """Tensors only, written atomically (a crash never leaves a half file under the name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save({"features": features.features, "labels": features.labels, "index": features.index}, f)


def load_features(path: Path) -> FeatureSet:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return FeatureSet(data["features"], data["labels"], data["index"])


def cached_features(path: Optional[Path], compute: Callable[[], FeatureSet], *,
                    device: torch.device) -> tuple[FeatureSet, bool]:
    """``(features, hit)``: load ``path`` when rank 0 has it, else ``compute()`` on every rank
    (collective) and save on rank 0. Rank 0's view decides, so all ranks take the same branch
    even on node-local disks; non-zero ranks then get an empty set (they never probe)."""
    rank, _ = world()
    have = torch.tensor(int(rank == 0 and path is not None and path.is_file()), device=device)
    if bool(all_reduce_sum(have) > 0):
        if rank == 0:
            return load_features(path), True
        return FeatureSet(torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.int64)), True
    features = compute()
    if rank == 0 and path is not None:
        save_features(features, path)
    return features, False
