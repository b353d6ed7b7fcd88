"""Source readers: each format, written here in miniature, converts to shards that give back
every readable sample exactly once with its exact label set; bad input is skipped or named."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlcdist.data.info import load_dataset_info
from mlcdist.data.encode import EncodeSettings
from mlcdist.data.sources.arff import list_arff
from mlcdist.data.sources.coco import list_coco
from mlcdist.data.sources.common import AnnotationError
from mlcdist.data.sources.manifest import list_manifest
from mlcdist.data.sources.mirflickr import list_mirflickr
from mlcdist.data.sources.nuswide import list_nuswide
from mlcdist.data.sources.voc import VOC_CLASSES, list_voc


from support.image_trees import (  # noqa: F401  (shared with e2e/test_make_shards)
    coco_tree, convert, labels_by_source, skipped, write_garbage, write_image,
)


# ----------------------------------------------------------------------------- COCO
def test_sources_coco_labels_order_and_skips(tmp_path):
    images, annotations = coco_tree(tmp_path)
    listing = list_coco(images, annotations)
    assert listing.class_names == ["person", "car", "dog"]
    samples = convert(listing, tmp_path / "out", encode=EncodeSettings(shorter_side=10))
    assert [s["source"] for s in samples] == ["a.jpg", "b.png", "sub/c.jpg"]  # ascending image id
    assert [s["labels"] for s in samples] == [[0, 2], [1], []]
    assert [s["image_id"] for s in samples] == [10, 20, 30]
    sizes = [Image.open(io.BytesIO(s["payload"])).size for s in samples]
    assert sizes == [
        (20, 10),
        (9, 7),
        (8, 8),
    ]  # shrunk to shorter side 10, small ones never upscaled
    assert all(Image.open(io.BytesIO(s["payload"])).format == "JPEG" for s in samples)
    skips = skipped(tmp_path / "out")
    assert skips.keys() == {"d.jpg", "missing.jpg"}
    assert skips["d.jpg"].startswith("corrupt image") and skips["missing.jpg"].startswith(
        "missing image"
    )
    info = load_dataset_info(tmp_path / "out")
    assert info.class_counts == [1, 1, 1] and info.label_cardinality == pytest.approx(1.0)
    assert [s.source for s in listing.without_unlabelled().specs] == ["a.jpg", "b.png", "d.jpg"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["annotations"].append({"image_id": 10, "category_id": 99}),
            "annotations[5] refers to category_id 99",
        ),
        (
            lambda d: d["annotations"].append({"image_id": 77, "category_id": 1}),
            "annotations[5] refers to image_id 77",
        ),
        (lambda d: d["annotations"][2].pop("image_id"), "annotations[2] has no valid 'image_id'"),
        (
            lambda d: d["images"].append({"id": 10, "file_name": "x.jpg"}),
            "images id 10 is listed twice",
        ),
        (lambda d: d.pop("categories"), "no 'categories' list"),
    ],
)
def test_sources_coco_malformed_names_file_and_entry(tmp_path, mutate, message):
    images, annotations = coco_tree(tmp_path)
    data = json.loads(annotations.read_text())
    mutate(data)
    annotations.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=re.escape(message)) as err:
        list_coco(images, annotations)
    assert str(annotations) in str(err.value)
    annotations.write_text("{not json")
    with pytest.raises(AnnotationError, match="instances.json: not valid JSON"):
        list_coco(images, annotations)


# ----------------------------------------------------------------------------- VOC
def voc_xml(objects: list[tuple[str, int]]) -> str:
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects
    )
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


def voc_tree(root: Path) -> Path:
    images = {
        "000001": [("dog", 0), ("person", 1)],
        "000002": [("chair", 1)],
        "000003": [("cat", 0), ("cat", 1), ("sofa", 0)],
        "000004": [("bird", 0)],
    }
    for i, (image_id, objects) in enumerate(images.items()):
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(objects))
        if image_id != "000004":  # its image is missing
            write_image(root / "JPEGImages" / f"{image_id}.jpg", seed=i)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000003\n000001\n000002\n000004\n")
    return root


def test_sources_voc_difficult_protocol(tmp_path):
    root = voc_tree(tmp_path / "VOC2007")
    c = {name: j for j, name in enumerate(VOC_CLASSES)}
    assert VOC_CLASSES == sorted(VOC_CLASSES) and len(VOC_CLASSES) == 20
    samples = convert(list_voc(root, "trainval"), tmp_path / "ignore")
    assert labels_by_source(samples) == {
        "000003.jpg": sorted([c["cat"], c["sofa"]]),
        "000001.jpg": [c["dog"]],
        "000002.jpg": [],
    }
    assert [s["source"] for s in samples] == [
        "000003.jpg",
        "000001.jpg",
        "000002.jpg",
    ]  # split-file order
    assert skipped(tmp_path / "ignore").keys() == {"000004.jpg"}
    samples = convert(list_voc(root, "trainval", difficult="positive"), tmp_path / "positive")
    assert labels_by_source(samples)["000001.jpg"] == sorted([c["dog"], c["person"]])
    assert labels_by_source(samples)["000002.jpg"] == [c["chair"]]


def test_sources_voc_malformed(tmp_path):
    root = voc_tree(tmp_path / "VOC2007")
    bad = root / "Annotations" / "000002.xml"
    bad.write_text("<annotation><object><name>dog</name></annotation>")
    with pytest.raises(AnnotationError, match=r"000002\.xml: malformed XML"):
        list_voc(root, "trainval")
    bad.write_text(voc_xml([("dragon", 0)]))
    with pytest.raises(AnnotationError, match=r"000002\.xml: object 0 has class 'dragon'"):
        list_voc(root, "trainval")
    bad.unlink()
    with pytest.raises(AnnotationError, match=r"000002\.xml: annotation file missing"):
        list_voc(root, "trainval")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        list_voc(root, "test")


# ----------------------------------------------------------------------------- NUS-WIDE
def nus_tree(root: Path) -> dict:
    entries = ["actor\\0001_11.jpg", "beach\\0002_22.jpg", "actor\\0003_33.jpg", "sky\\0004_44.jpg"]
    for i, entry in enumerate(entries[:3]):
        write_image(root / "Flickr" / entry.replace("\\", "/"), seed=i)
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList" / "TrainImagelist.txt").write_text("\r\n".join(entries) + "\r\n")
    (root / "Concepts81.txt").write_text("sky\nactor\nbeach\n")
    labels = {"sky": "0 1 0 1", "actor": "1 0 1 0", "beach": "0 1 0 0"}
    (root / "TrainTestLabels").mkdir()
    for concept, column in labels.items():
        (root / "TrainTestLabels" / f"Labels_{concept}_Train.txt").write_text(
            "\n".join(column.split()) + "\n"
        )
    return {
        "images": root / "Flickr",
        "image_list": root / "ImageList" / "TrainImagelist.txt",
        "labels_dir": root / "TrainTestLabels",
        "concepts": root / "Concepts81.txt",
    }


def test_sources_nuswide_layout(tmp_path):
    paths = nus_tree(tmp_path / "nus")
    listing = list_nuswide(**paths, split="Train")
    assert listing.class_names == ["sky", "actor", "beach"]
    samples = convert(listing, tmp_path / "out")
    assert labels_by_source(samples) == {
        "actor/0001_11.jpg": [1],
        "beach/0002_22.jpg": [0, 2],
        "actor/0003_33.jpg": [1],
    }
    assert skipped(tmp_path / "out").keys() == {"sky/0004_44.jpg"}


def test_sources_nuswide_malformed(tmp_path):
    paths = nus_tree(tmp_path / "nus")
    label_file = paths["labels_dir"] / "Labels_beach_Train.txt"
    label_file.write_text("0\n1\n2\n0\n")
    with pytest.raises(
        AnnotationError, match=r"Labels_beach_Train.txt:3: expected 0 or 1, got '2'"
    ):
        list_nuswide(**paths)
    label_file.write_text("0\n1\n")
    with pytest.raises(
        AnnotationError, match=r"Labels_beach_Train.txt: 2 lines, but the image list has 4"
    ):
        list_nuswide(**paths)
    with pytest.raises(FileNotFoundError, match="Labels_sky_Test.txt"):
        list_nuswide(**paths, split="Test")


# ----------------------------------------------------------------------------- MIRFLICKR
def mir_tree(root: Path) -> tuple[Path, Path]:
    for n in (1, 2, 3, 5):  # im4 missing
        write_image(root / "mirflickr" / f"im{n}.jpg", seed=n)
    ann = root / "annotations"
    ann.mkdir()
    (ann / "sky.txt").write_text("1\n3\n")
    (ann / "dog.txt").write_text("2\n3\n5\n\n")
    (ann / "dog_r1.txt").write_text("3\n")
    (ann / "README.txt").write_text("The annotations of MIRFLICKR-25k.\n")
    return root / "mirflickr", ann


def test_sources_mirflickr_layout_and_split(tmp_path):
    images, ann = mir_tree(tmp_path)
    listing = list_mirflickr(images, ann)
    assert listing.class_names == ["dog", "sky"]
    samples = convert(listing, tmp_path / "all")
    assert [s["source"] for s in samples] == ["im1.jpg", "im2.jpg", "im3.jpg", "im5.jpg"]
    assert [s["labels"] for s in samples] == [[1], [0], [0, 1], [0]]
    assert skipped(tmp_path / "all").keys() == {"im4.jpg"}
    with_r1 = list_mirflickr(images, ann, include_r1=True)
    assert with_r1.class_names == ["dog", "dog_r1", "sky"]
    assert [s.labels for s in with_r1.specs][2] == (0, 1, 2)
    (tmp_path / "split.txt").write_text("5\n1\n")
    samples = convert(
        list_mirflickr(images, ann, split_file=tmp_path / "split.txt"), tmp_path / "split"
    )
    assert [(s["source"], s["labels"]) for s in samples] == [("im5.jpg", [0]), ("im1.jpg", [1])]


def test_sources_mirflickr_malformed(tmp_path):
    images, ann = mir_tree(tmp_path)
    (ann / "sky.txt").write_text("1\nim3\n")
    with pytest.raises(
        AnnotationError, match=r"sky.txt:2: expected an image number >= 1, got 'im3'"
    ):
        list_mirflickr(images, ann)


# ----------------------------------------------------------------------------- manifest
def manifest_images(root: Path) -> None:
    write_image(root / "a.jpg", seed=1)
    write_image(root / "sub" / "b.png", seed=2, fmt="PNG")
    write_image(root / "c.jpg", seed=3)
    write_garbage(root / "bad.jpg")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_sources_manifest_csv_and_jsonl(tmp_path, kind):
    manifest_images(tmp_path)
    rows = [
        ("a.jpg", ["cat", "dog"]),
        ("sub/b.png", ["dog", "bird"]),
        ("c.jpg", []),
        ("bad.jpg", ["cat"]),
    ]
    path = tmp_path / f"m.{kind}"
    if kind == "csv":
        seps = ["|", ";", "|", "|"]
        path.write_text(
            "path,labels\n"
            + "".join(f"{p},{s.join(ls)}\n" for (p, ls), s in zip(rows, seps, strict=True))
        )
    else:
        path.write_text("".join(json.dumps({"path": p, "labels": ls}) + "\n" for p, ls in rows))
    listing = list_manifest(path)
    assert listing.class_names == ["bird", "cat", "dog"]
    samples = convert(listing, tmp_path / "out")
    assert labels_by_source(samples) == {"a.jpg": [1, 2], "sub/b.png": [0, 2], "c.jpg": []}
    assert skipped(tmp_path / "out").keys() == {"bad.jpg"}
    (tmp_path / "classes.txt").write_text("dog\ncat\nbird\nfish\n")
    fixed = list_manifest(path, classes=tmp_path / "classes.txt")
    assert fixed.class_names == ["dog", "cat", "bird", "fish"]
    assert [s.labels for s in fixed.specs][:2] == [(0, 1), (0, 2)]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("m.csv", "path,labels\na.jpg,cat\nb.jpg,cat,dog\n", r"m.csv:3: 3 fields, expected 2"),
        ("m.csv", "file,tags\na.jpg,cat\n", r"m.csv:1: header is"),
        ("m.csv", "path,labels\n,cat\n", r"m.csv:2: empty path"),
        (
            "m.jsonl",
            '{"path": "a.jpg", "labels": []}\n{"path": "b.jpg", \n',
            r"m.jsonl:2: not valid JSON",
        ),
        ("m.jsonl", '{"path": "a.jpg", "labels": "cat"}\n', r"m.jsonl:1: 'labels' must be a list"),
        (
            "m.jsonl",
            '{"labels": ["cat"]}\n',
            r"m.jsonl:1: expected an object with a non-empty string 'path'",
        ),
    ],
)
def test_sources_manifest_malformed_names_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(AnnotationError, match=message):
        list_manifest(tmp_path / name)


def test_sources_manifest_label_outside_class_list(tmp_path):
    (tmp_path / "m.csv").write_text("path,labels\na.jpg,cat\nb.jpg,cow\n")
    (tmp_path / "classes.txt").write_text("cat\n")
    with pytest.raises(AnnotationError, match=r"m.csv:3: label 'cow' is not in the class list"):
        list_manifest(tmp_path / "m.csv", classes=tmp_path / "classes.txt")


# ----------------------------------------------------------------------------- ARFF quirks
ARFF = """% a comment line
@RELATION 'toy data'

@attribute 'first feature' numeric
@ATTRIBUTE f2 REAL
@attribute "label one" {0,1}
@attribute f3 integer
@attribute lab2 {0,1}
% another comment
@data
1.5,-2,1,3,0
{0 0.25,2 1,4 1}
'7',8,0,9,1
"""
XML = """<?xml version="1.0" encoding="utf-8"?>
<labels xmlns="http://mulan.sourceforge.net/labels">
<label name="lab2"></label>
<label name="label one"></label>
</labels>
"""


def test_sources_arff_quirks_dense_sparse_namespaces(tmp_path):
    (tmp_path / "toy.arff").write_text(ARFF)
    (tmp_path / "toy.xml").write_text(XML)
    listing = list_arff(tmp_path / "toy.arff", tmp_path / "toy.xml")
    assert listing.class_names == ["label one", "lab2"]  # ARFF column order
    assert listing.modality == "vector" and listing.feature_dim == 3
    samples = convert(listing, tmp_path / "out")
    vectors = [np.load(io.BytesIO(s["payload"]), allow_pickle=False) for s in samples]
    assert all(v.dtype == np.float32 for v in vectors)
    np.testing.assert_array_equal(np.stack(vectors), [[1.5, -2, 3], [0.25, 0, 0], [7, 8, 9]])
    assert [s["labels"] for s in samples] == [[0], [0, 1], [1]]
    assert load_dataset_info(tmp_path / "out").feature_dim == 3


@pytest.mark.parametrize(
    "row, message",
    [
        ("1,2,?,3,0", "missing value"),
        ("1,2,1", "3 values for 5"),
        ("1,2,5,3,0", "label 'label one' is 5.0"),
        ("{0 1,9 1}", "sparse index outside"),
    ],
)
def test_sources_arff_malformed(tmp_path, row, message):
    (tmp_path / "toy.arff").write_text(ARFF + row + "\n")
    (tmp_path / "toy.xml").write_text(XML)
    with pytest.raises(AnnotationError, match=message) as err:
        list_arff(tmp_path / "toy.arff", tmp_path / "toy.xml")
    assert "toy.arff" in str(err.value)
    (tmp_path / "toy.arff").write_text(ARFF)
    (tmp_path / "toy.xml").write_text(XML.replace("lab2", "nope"))
    with pytest.raises(AnnotationError, match="label 'nope' is not an attribute"):
        list_arff(tmp_path / "toy.arff", tmp_path / "toy.xml")
