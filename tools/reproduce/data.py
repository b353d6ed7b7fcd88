"""Mulan ARFF -> standardised vector shards -> in-memory tensors, by library calls.

The conversion is the documented ``python -m tools.make_shards arff --standardize-with
TRAIN.arff`` (``recipes/yeast.yaml`` header), done with the library that command wraps:
``data.sources.arff.list_arff`` + ``data.shards.write_shards`` (same name, defaults and resume,
so the same ``dataset.json``). The shards are then read back once through the eval pipeline.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch import Tensor

from mlcdist.errors import MlcdistError

REPO = Path(__file__).resolve().parents[2]
# the official splits live outside the repository; MLCDIST_MULAN (or --mulan) points at them
DEFAULT_MULAN = Path(os.environ.get("MLCDIST_MULAN", REPO.parent / "shared" / "data" / "mulan"))


class ReproduceError(MlcdistError):
    """A setup problem (missing data, recipe, bad option), phrased with the file and the fix."""


@dataclass(frozen=True)
class VectorSet:
    """One data set in memory, in ``dataset.json`` order: train and test features (float32,
    standardised by the converter unless ``--no-standardize``) and multi-hot labels, plus a
    fingerprint of both splits' ``dataset.json`` (it lists the shards' sha256)."""

    name: str
    class_names: tuple[str, ...]
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    fingerprint: str


def arff_paths(mulan: Path, dataset: str) -> dict[str, Path]:
    """``{"train", "test", "xml"}`` of a Mulan set; a missing file names itself and the fix."""
    folder = mulan / dataset
    paths = {"train": folder / f"{dataset}-train.arff", "test": folder / f"{dataset}-test.arff",
             "xml": folder / f"{dataset}.xml"}
    for path in paths.values():
        if not path.is_file():
            raise ReproduceError(
                f"{path}: not found. Pass --mulan PATH, the folder holding {dataset}/"
                f"{dataset}-train.arff, {dataset}-test.arff and {dataset}.xml (default "
                f"{DEFAULT_MULAN}; see its README.md). The data is read in place, never copied.")
    return paths


def convert(mulan: Path, dataset: str, shards: Path, standardize: bool = True) -> dict[str, Path]:
    """Shards of the official train/test split in ``shards/DATASET/{train,test}``, both
    standardised with the train file's statistics (``standardize=False``: raw ARFF values, an
    ablation only). The writer's resume makes a repeated call cheap (unchanged input: nothing
    is re-encoded). Bad ARFF/XML raises ``AnnotationError`` naming the file and row."""
    from mlcdist.data.shards import write_shards
    from mlcdist.data.sources.arff import list_arff

    paths = arff_paths(mulan, dataset)
    scale = str(paths["train"]) if standardize else None
    out = {}
    for split in ("train", "test"):
        out[split] = shards / dataset / split
        listing = list_arff(str(paths[split]), str(paths["xml"]), standardize_with=scale)
        write_shards(listing.specs, out[split], listing.class_names, name=f"{dataset}-{split}",
                     modality=listing.modality, source=listing.source,
                     feature_dim=listing.feature_dim)
    return out


def load_vectors(location: Path) -> tuple[Tensor, Tensor, list[str], str]:
    """Features, labels, class names and the ``dataset.json`` sha256 of a vector shard folder,
    read through the eval pipeline (every sample once, in dataset order)."""
    from mlcdist.config import AugmentConfig, DataConfig
    from mlcdist.data.loaders import make_loader
    from mlcdist.eval.features import collect

    loader = make_loader(str(location), DataConfig(batch_size=512, num_workers=0),
                         AugmentConfig(), mode="eval", rank=0, world_size=1)
    if loader.info.modality != "vector":
        raise ReproduceError(f"{location}: holds {loader.info.modality} data; expected vectors")
    (x,), y, _ = collect(loader, lambda batch: (batch,), torch.device("cpu"))
    digest = hashlib.sha256((location / "dataset.json").read_bytes()).hexdigest()
    return x, y, list(loader.info.class_names), digest


def prepare(mulan: Path, dataset: str, shards: Path, console: Console,
            standardize: bool = True) -> VectorSet:
    """Convert (or reuse) and load one data set."""
    paths = convert(mulan, dataset, shards, standardize)
    train_x, train_y, names, train_fp = load_vectors(paths["train"])
    test_x, test_y, test_names, test_fp = load_vectors(paths["test"])
    if names != test_names:
        raise ReproduceError(f"{paths['test']}: class names differ from {paths['train']}")
    scaling = "standardised with train statistics" if standardize else "RAW (not standardised)"
    console.print(f"{dataset}: {len(train_x)} train / {len(test_x)} test rows, "
                  f"{train_x.shape[1]} features {scaling}, {len(names)} labels -> {shards / dataset}")
    return VectorSet(dataset, tuple(names), train_x, train_y, test_x, test_y,
                     hashlib.sha256((train_fp + test_fp).encode()).hexdigest()[:16])
