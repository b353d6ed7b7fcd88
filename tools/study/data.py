"""Mulan ARFF -> standardised vector shards -> in-memory tensors, by library calls.

A data set is a :class:`DataSource`: a name and its train/test ARFF pair with the Mulan XML, from
a Mulan folder by name (``mulan_source``), from a folder of ``NAME-train.arff`` files
(``folder_sources``) or spelled out (``parse_source``: ``NAME=TRAIN,TEST,XML``).

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
from typing import TYPE_CHECKING

from rich.console import Console

from mlcdist.errors import MlcdistError

if TYPE_CHECKING:  # torch loads only when a set is read, so that --help stays fast
    from torch import Tensor

REPO = Path(__file__).resolve().parents[2]
# the official splits live outside the repository; MLCDIST_MULAN (or --mulan) points at them
DEFAULT_MULAN = Path(os.environ.get("MLCDIST_MULAN", REPO.parent / "shared" / "data" / "mulan"))


class StudyError(MlcdistError):
    """A setup problem (missing data, recipe, bad option), phrased with the file and the fix."""


ReproduceError = StudyError  # the paper preset's name for it


@dataclass(frozen=True)
class DataSource:
    """A Mulan-style data set: its official train and test ARFF files and the label XML."""

    name: str
    train: Path
    test: Path
    xml: Path

    def check(self, fix: str) -> "DataSource":
        for path in (self.train, self.test, self.xml):
            if not path.is_file():
                raise StudyError(f"{path}: not found ({self.name}). {fix}")
        return self


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


def mulan_source(mulan: Path, dataset: str) -> DataSource:
    """``MULAN/NAME/NAME-{train,test}.arff`` and ``NAME.xml``; a missing file names itself and the fix."""
    folder = mulan / dataset
    source = DataSource(dataset, folder / f"{dataset}-train.arff", folder / f"{dataset}-test.arff",
                        folder / f"{dataset}.xml")
    return source.check(f"Pass --mulan PATH, the folder holding {dataset}/{dataset}-train.arff, "
                        f"{dataset}-test.arff and {dataset}.xml (default {DEFAULT_MULAN}; see its "
                        "README.md), or --arff-dir / --data. The data is read in place, never copied.")


def folder_sources(folder: Path) -> list[DataSource]:
    """Every ``NAME-train.arff`` in ``folder`` with its ``NAME-test.arff`` and ``NAME.xml``."""
    if not folder.is_dir():
        raise StudyError(f"--arff-dir {folder}: no such folder")
    names = sorted(p.name[: -len("-train.arff")] for p in folder.glob("*-train.arff"))
    if not names:
        raise StudyError(f"--arff-dir {folder}: holds no NAME-train.arff (with NAME-test.arff and "
                         "NAME.xml beside it)")
    return [DataSource(n, folder / f"{n}-train.arff", folder / f"{n}-test.arff", folder / f"{n}.xml")
            .check("--arff-dir needs NAME-train.arff, NAME-test.arff and NAME.xml side by side")
            for n in names]


def parse_source(spec: str) -> DataSource:
    """``NAME=TRAIN.arff,TEST.arff,LABELS.xml`` (``--data``)."""
    name, _, paths = spec.partition("=")
    parts = [Path(p) for p in paths.split(",")] if paths else []
    if not name or len(parts) != 3:
        raise StudyError(f"--data {spec!r}: expected NAME=TRAIN.arff,TEST.arff,LABELS.xml")
    return DataSource(name, *parts).check("Fix the path given with --data.")


def convert(source: DataSource, shards: Path, standardize: bool = True) -> dict[str, Path]:
    """Shards of the official train/test split in ``shards/DATASET/{train,test}``, both
    standardised with the train file's statistics (``standardize=False``: raw ARFF values, an
    ablation only). The writer's resume makes a repeated call cheap (unchanged input: nothing
    is re-encoded). Bad ARFF/XML raises ``AnnotationError`` naming the file and row."""
    from mlcdist.data.shards import write_shards
    from mlcdist.data.sources.arff import list_arff

    dataset = source.name
    scale = str(source.train) if standardize else None
    out = {}
    for split in ("train", "test"):
        out[split] = shards / dataset / split
        listing = list_arff(str(getattr(source, split)), str(source.xml), standardize_with=scale)
        write_shards(listing.specs, out[split], listing.class_names, name=f"{dataset}-{split}",
                     modality=listing.modality, source=listing.source,
                     feature_dim=listing.feature_dim)
    return out


def load_vectors(location: Path) -> tuple[Tensor, Tensor, list[str], str]:
    """Features, labels, class names and the ``dataset.json`` sha256 of a vector shard folder,
    read through the eval pipeline (every sample once, in dataset order)."""
    from mlcdist.config import AugmentConfig, DataConfig
    from mlcdist.data.loaders import make_loader
    import torch

    from mlcdist.eval.features import collect

    loader = make_loader(str(location), DataConfig(batch_size=512, num_workers=0),
                         AugmentConfig(), mode="eval", rank=0, world_size=1)
    if loader.info.modality != "vector":
        raise StudyError(f"{location}: holds {loader.info.modality} data; expected vectors")
    (x,), y, _ = collect(loader, lambda batch: (batch,), torch.device("cpu"))
    digest = hashlib.sha256((location / "dataset.json").read_bytes()).hexdigest()
    return x, y, list(loader.info.class_names), digest


def prepare(source: DataSource, shards: Path, console: Console, standardize: bool = True) -> VectorSet:
    """Convert (or reuse) and load one data set."""
    dataset = source.name
    paths = convert(source, shards, standardize)
    train_x, train_y, names, train_fp = load_vectors(paths["train"])
    test_x, test_y, test_names, test_fp = load_vectors(paths["test"])
    if names != test_names:
        raise StudyError(f"{paths['test']}: class names differ from {paths['train']}")
    scaling = "standardised with train statistics" if standardize else "RAW (not standardised)"
    console.print(f"{dataset}: {len(train_x)} train / {len(test_x)} test rows, "
                  f"{train_x.shape[1]} features {scaling}, {len(names)} labels -> {shards / dataset}")
    return VectorSet(dataset, tuple(names), train_x, train_y, test_x, test_y,
                     hashlib.sha256((train_fp + test_fp).encode()).hexdigest()[:16])
