"""NUS-WIDE (released layout) to multi-label image samples.

Inputs, as shipped by NUS::

    ImageList/TrainImagelist.txt           one image per line, Windows path: actor\\0001_21244.jpg
    Concepts81.txt                         the 81 concept names, one per line: the class order
    TrainTestLabels/Labels_<c>_Train.txt   one 0/1 per line, aligned with the image list
    Flickr/actor/0001_2124494179.jpg       the images (IMAGES = the Flickr folder)

``split`` (``Train`` or ``Test``) picks the ``Labels_<c>_{split}.txt`` files; pass the
matching image list. Samples are in image-list order; images with none of the 81 concepts
keep an empty label set.
"""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import numpy as np

from mlcdist.data.encode import SampleSpec
from mlcdist.data.sources.common import AnnotationError, Listing, label_tuples, read_lines


def _concept_column(path: Path, num_images: int) -> np.ndarray:
    """One label file as a bool column; errors name the file and the first bad line."""
    lines = read_lines(path, "NUS-WIDE label file")
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) != num_images:
        raise AnnotationError(
            f"{path}: {len(lines)} lines, but the image list has {num_images} images"
        )
    values = np.asarray(lines)
    bad = np.flatnonzero((values != "0") & (values != "1"))
    if len(bad):
        raise AnnotationError(f"{path}:{bad[0] + 1}: expected 0 or 1, got {str(values[bad[0]])!r}")
    return values == "1"


def list_nuswide(
    images: str | Path,
    image_list: str | Path,
    labels_dir: str | Path,
    concepts: str | Path,
    split: str = "Train",
) -> Listing:
    """Samples of ``image_list`` with labels from the per-concept ``{split}`` files."""
    if split not in ("Train", "Test"):
        raise ValueError(f"split={split!r}: expected 'Train' or 'Test' (the label file suffix)")
    names = [c for c in read_lines(concepts, "NUS-WIDE concept list (Concepts81.txt)") if c]
    if len(set(names)) != len(names):
        raise AnnotationError(f"{concepts}: a concept name is listed twice")
    entries = [line for line in read_lines(image_list, "NUS-WIDE image list") if line]
    columns = [
        _concept_column(Path(labels_dir) / f"Labels_{c}_{split}.txt", len(entries)) for c in names
    ]
    multi_hot = np.stack(columns, axis=1) if columns else np.zeros((len(entries), 0), bool)
    root = Path(images)
    specs = []
    for entry, labels in zip(entries, label_tuples(multi_hot), strict=True):
        relative = Path(*PureWindowsPath(entry).parts)  # the released lists use backslashes
        specs.append(
            SampleSpec(source=relative.as_posix(), labels=labels, path=str(root / relative))
        )
    source = {
        "kind": "nuswide",
        "image_list": str(image_list),
        "labels_dir": str(labels_dir),
        "concepts": str(concepts),
        "split": split,
    }
    return Listing(names, specs, source)
