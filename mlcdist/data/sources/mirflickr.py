"""MIRFLICKR-25k (released layout) to multi-label image samples.

Inputs::

    IMAGES/im1.jpg .. imN.jpg          the images
    ANNOTATIONS/<concept>.txt          image numbers (one per line) showing <concept>
    ANNOTATIONS/<concept>_r1.txt       the stricter "relevant" subset of a concept

Classes: the ``<concept>.txt`` files in sorted name order (24 for the release). The ``_r1``
files are skipped by default because each duplicates a subset of its concept; with
``include_r1`` they become extra classes. ``README*`` files are ignored. There is no official
split: with ``split_file`` (image numbers, one per line) the samples are those, in file
order; otherwise all images ``1..N`` in ascending order, where N is the largest image number
found in IMAGES or in the annotations (a listed image missing on disk is skipped by the writer).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mlcdist.data.encode import SampleSpec
from mlcdist.data.sources.common import AnnotationError, Listing, label_tuples, read_lines


def _numbers(path: Path, what: str) -> np.ndarray:
    """Positive image numbers of a list file; error names the file, line and value."""
    lines = read_lines(path, what)
    numbers = []
    for lineno, line in enumerate(lines, start=1):
        if not line:
            continue
        if not line.isdigit() or int(line) < 1:
            raise AnnotationError(f"{path}:{lineno}: expected an image number >= 1, got {line!r}")
        numbers.append(int(line))
    return np.asarray(numbers, dtype=np.int64)


def list_mirflickr(
    images: str | Path,
    annotations: str | Path,
    split_file: str | Path | None = None,
    include_r1: bool = False,
) -> Listing:
    """Samples ``im{n}.jpg`` with the concepts whose annotation file lists ``n``."""
    images, annotations = Path(images), Path(annotations)
    if not annotations.is_dir():
        raise FileNotFoundError(f"{annotations}: annotation folder not found; check --annotations")
    files = sorted(
        p
        for p in annotations.glob("*.txt")
        if not p.name.lower().startswith("readme") and (include_r1 or not p.stem.endswith("_r1"))
    )
    if not files:
        raise FileNotFoundError(f"{annotations}: no <concept>.txt annotation files here")
    names = [p.stem for p in files]
    members = [_numbers(p, "MIRFLICKR annotation file") for p in files]
    on_disk = [
        int(m.group(1))
        for p in images.glob("im*.jpg")
        if (m := re.fullmatch(r"im(\d+)\.jpg", p.name))
    ]
    largest = max([0, *on_disk, *(int(m.max()) for m in members if len(m))])
    multi_hot = np.zeros((largest + 1, len(names)), dtype=bool)
    for j, numbers in enumerate(members):
        multi_hot[numbers, j] = True
    if split_file is not None:
        chosen = _numbers(Path(split_file), "MIRFLICKR split file")
        if len(np.unique(chosen)) != len(chosen):
            raise AnnotationError(f"{split_file}: an image number is listed more than once")
        if len(chosen) and chosen.max() > largest:
            raise AnnotationError(
                f"{split_file}: image {chosen.max()} is beyond the last image im{largest}.jpg"
            )
    else:
        chosen = np.arange(1, largest + 1)
    specs = [
        SampleSpec(source=f"im{n}.jpg", labels=labels, path=str(images / f"im{n}.jpg"))
        for n, labels in zip(chosen.tolist(), label_tuples(multi_hot[chosen]), strict=True)
    ]
    source = {
        "kind": "mirflickr",
        "annotations": str(annotations),
        "images": str(images),
        "split_file": None if split_file is None else str(split_file),
        "include_r1": include_r1,
    }
    return Listing(names, specs, source)
