"""PASCAL VOC (2007/2012 layout) to multi-label image samples.

Layout under ``ROOT`` (e.g. ``VOCdevkit/VOC2007``)::

    ImageSets/Main/{split}.txt   one image id per line (e.g. 000005)
    Annotations/{id}.xml         <object><name>chair</name><difficult>1</difficult>...</object>
    JPEGImages/{id}.jpg

Classes: the 20 VOC classes in the standard alphabetical order (:data:`VOC_CLASSES`).
Difficult objects follow the usual multi-label protocol: with ``difficult="ignore"`` (default)
a class whose only objects in an image are ``difficult`` is not a positive for that image;
``difficult="positive"`` counts them. Samples are in split-file order.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from mlcdist.data.encode import SampleSpec
from mlcdist.data.sources.common import AnnotationError, Listing, read_lines

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
DIFFICULT_MODES = ("ignore", "positive")


def read_voc_labels(xml_path: Path, difficult: str = "ignore") -> tuple[int, ...]:
    """Sorted class indices present in one annotation file (see module docstring)."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise AnnotationError(
            f"{xml_path}: annotation file missing for an image in the split list"
        ) from None
    except ET.ParseError as err:
        raise AnnotationError(f"{xml_path}: malformed XML ({err})") from None
    index = {name: j for j, name in enumerate(VOC_CLASSES)}
    labels: set[int] = set()
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise AnnotationError(
                f"{xml_path}: object {k} has class {name!r}, not one of the 20 VOC classes"
            )
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise AnnotationError(
                f"{xml_path}: object {k} ({name}) has <difficult>{flag}</difficult>, "
                "expected 0 or 1"
            )
        if flag == "0" or difficult == "positive":
            labels.add(index[name])
    return tuple(sorted(labels))


def list_voc(root: str | Path, split: str = "trainval", difficult: str = "ignore") -> Listing:
    """Samples of ``ROOT/ImageSets/Main/{split}.txt`` with their VOC label sets."""
    if difficult not in DIFFICULT_MODES:
        raise ValueError(f"difficult={difficult!r}: expected one of {DIFFICULT_MODES}")
    root = Path(root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    ids = [line.split()[0] for line in read_lines(split_file, f"VOC split list '{split}'") if line]
    if len(set(ids)) != len(ids):
        raise AnnotationError(f"{split_file}: an image id is listed more than once")
    specs = [
        SampleSpec(
            source=f"{i}.jpg",
            labels=read_voc_labels(root / "Annotations" / f"{i}.xml", difficult),
            path=str(root / "JPEGImages" / f"{i}.jpg"),
        )
        for i in ids
    ]
    source = {"kind": "voc", "root": str(root), "split": split, "difficult": difficult}
    return Listing(list(VOC_CLASSES), specs, source)
