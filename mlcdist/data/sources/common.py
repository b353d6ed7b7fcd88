"""What every source reader returns, plus the small helpers they share."""

from __future__ import annotations

from mlcdist.errors import MlcdistError

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mlcdist.data.encode import SampleSpec


class AnnotationError(MlcdistError):
    """A malformed annotation file; the message names the file and the offending entry."""


@dataclass
class Listing:
    """A source's samples in their documented order, ready for :func:`write_shards`."""

    class_names: list[str]
    specs: list[SampleSpec]
    source: dict = field(default_factory=dict)
    modality: str = "image"
    feature_dim: int | None = None

    def without_unlabelled(self) -> Listing:
        """Drop samples with an empty label set (order of the rest unchanged)."""
        return replace(self, specs=[s for s in self.specs if s.labels])


def read_lines(path: str | Path, what: str) -> list[str]:
    """Stripped lines of a text file (blank lines kept, so line numbers stay aligned)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found; check the path option") from None
    except IsADirectoryError:
        raise AnnotationError(f"{path}: expected the {what} file, got a folder") from None
    return [line.strip() for line in text.splitlines()]


def pair_label_tuples(rows: np.ndarray, cols: np.ndarray, num_rows: int) -> list[tuple[int, ...]]:
    """(sample, class) pairs, repeats allowed -> per-sample sorted distinct class tuples.

    Sparse on purpose: Objects365 has 1.7M images x 365 classes, too many for a dense matrix.
    """
    if num_rows == 0:
        return []
    width = int(cols.max()) + 1 if len(cols) else 1
    flat = np.unique(np.asarray(rows, np.int64) * width + np.asarray(cols, np.int64))
    rows, cols = flat // width, flat % width
    bounds = np.searchsorted(rows, np.arange(1, num_rows))
    return [tuple(part.tolist()) for part in np.split(cols, bounds)]


def label_tuples(multi_hot: np.ndarray) -> list[tuple[int, ...]]:
    """Rows of an ``N x C`` 0/1 matrix -> sorted class-index tuples, e.g. ``[0,1,1] -> (1, 2)``."""
    rows, cols = np.nonzero(np.asarray(multi_hot, dtype=bool))
    return pair_label_tuples(rows, cols, multi_hot.shape[0])
