"""The shared writer and its command line: determinism, resume, shard sizing, verify, the
digits demo set and the real Mulan ARFF files (read in place from /work/shared)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from support.paths import MULAN, needs_mulan
from support.image_trees import coco_tree, read_back, write_image

from mlcdist.data.info import load_dataset_info
from mlcdist.data.encode import SampleSpec
from mlcdist.data.shards import PROGRESS_NAME, parse_size, write_dataset, write_shards
from mlcdist.data.verify import verify
from tools.make_shards import main



def image_specs(root: Path, count: int = 9) -> list[SampleSpec]:
    specs = []
    for i in range(count):
        path = write_image(root / f"{i}.jpg", (10 + i, 8), seed=i) if i != 4 else root / "gone.jpg"
        specs.append(SampleSpec(source=path.name, labels=(i % 3, (i * 2) % 5), path=str(path)))
    return specs


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def write(specs, out, **kw):
    kw.setdefault("max_samples_per_shard", 3)
    return write_shards(specs, out, [f"c{j}" for j in range(5)], name="t", **kw)


def test_shards_deterministic_across_runs_and_worker_counts(tmp_path):
    specs = image_specs(tmp_path / "img")
    write(specs, tmp_path / "a", workers=1)
    write(specs, tmp_path / "b", workers=2)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a.keys() == {"dataset.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"}
    assert a == b
    samples = read_back(tmp_path / "a")
    assert [s["source"] for s in samples] == [f"{i}.jpg" for i in range(9) if i != 4]
    assert [s["labels"] for s in samples] == [
        sorted({i % 3, (i * 2) % 5}) for i in range(9) if i != 4
    ]
    info = load_dataset_info(tmp_path / "a")
    assert [s.num_samples for s in info.shards] == [3, 3, 2]
    assert info.skipped == [
        {"source": "gone.jpg", "reason": f"missing image: {tmp_path / 'img' / 'gone.jpg'}"}
    ]


def test_shards_resume_after_interruption_equals_uninterrupted(tmp_path):
    specs = image_specs(tmp_path / "img")
    write(specs, tmp_path / "whole")

    def crash(entry):
        raise KeyboardInterrupt(f"interrupted after {entry.file}")

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        write(specs, out, on_shard_written=crash)
    assert (out / PROGRESS_NAME).exists() and not (out / "dataset.json").exists()
    (out / "shard-000001.tar.tmp").write_bytes(b"half-written")  # what a kill mid-shard leaves
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    written = []
    write(specs, out, on_shard_written=lambda e: written.append(e.file))
    assert written == ["shard-000001.tar", "shard-000002.tar"]  # the completed shard was kept
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first
    assert files(out) == files(tmp_path / "whole")


def test_shards_resume_ignores_progress_of_a_different_run(tmp_path):
    specs = image_specs(tmp_path / "img")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        write(specs, out, on_shard_written=lambda e: (_ for _ in ()).throw(RuntimeError()))
    written = []
    write(
        specs[:5], out, on_shard_written=lambda e: written.append(e.file), max_samples_per_shard=2
    )
    assert written == ["shard-000000.tar", "shard-000001.tar"]
    assert sorted(files(out)) == [
        "dataset.json",
        "shard-000000.tar",
        "shard-000001.tar",
    ]  # stale ones removed


def test_shards_byte_limit_and_size_parsing(tmp_path):
    assert (
        parse_size("256MB") == 256 * 10**6
        and parse_size("1GiB") == 2**30
        and parse_size("512") == 512
    )
    with pytest.raises(ValueError, match="shard size '12 parsecs'"):
        parse_size("12 parsecs")
    specs = image_specs(tmp_path / "img")
    info = write(specs, tmp_path / "out", max_samples_per_shard=100, max_shard_bytes=5000)
    sizes = [(tmp_path / "out" / s.file).stat().st_size for s in info.shards]
    assert len(sizes) > 1 and sum(s.num_samples for s in info.shards) == 8
    assert all(size <= 5000 + 10240 for size in sizes)  # limit counts members; tar adds end padding
    assert len(read_back(tmp_path / "out")) == 8


def test_shards_label_out_of_range_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="x.jpg: label index 7 outside 0..4"):
        write([SampleSpec("x.jpg", (7,), pixels=np.zeros((4, 4, 3), np.uint8))], tmp_path / "out")


def test_shards_verify_passes_then_catches_tampering(tmp_path, capsys):
    specs = image_specs(tmp_path / "img")
    out = tmp_path / "out"
    write(specs, out)
    report = verify(out, decode_images=True)
    assert report.ok and [s.found for s in report.shards] == [3, 3, 2]
    assert main(["verify", str(out)]) == 0
    shard = out / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # inside the first JPEG payload
    shard.write_bytes(bytes(data))
    report = verify(out)
    assert not report.ok and not report.shards[1].sha256_ok and report.shards[0].sha256_ok
    assert main(["verify", str(out)]) == 1
    assert "sha256 differs" in capsys.readouterr().err


def test_shards_verify_recounts_classes(tmp_path):
    out = tmp_path / "out"
    write(image_specs(tmp_path / "img"), out)
    index = json.loads((out / "dataset.json").read_text())
    index["class_counts"][0] += 1
    index["shards"][2]["num_samples"] = 5
    (out / "dataset.json").write_text(json.dumps(index))
    report = verify(out)
    assert any("class counts" in p for p in report.problems)
    assert report.shards[2].problems == ["2 samples, dataset.json says 5"]


def test_shards_cli_coco_with_workers(tmp_path):
    images, annotations = coco_tree(tmp_path)
    out = tmp_path / "shards" / "coco" / "train"
    argv = [
        "coco",
        "--images",
        str(images),
        "--annotations",
        str(annotations),
        "--out",
        str(out),
        "--workers",
        "2",
        "--no-progress",
        "--shorter-side",
        "10",
        "--quality",
        "80",
        "--max-skipped",
        "0.5",  # 2 of the 5 images are missing or corrupt on purpose
    ]
    assert main(argv) == 0
    info = load_dataset_info(out)
    assert info.name == "coco-train" and info.image == {"shorter_side": 10, "quality": 80}
    assert info.num_samples == 3 and len(info.skipped) == 2 and info.source["kind"] == "coco"
    assert main(argv + ["--drop-unlabelled", "--out", str(tmp_path / "dropped")]) == 0
    assert [s["source"] for s in read_back(tmp_path / "dropped")] == ["a.jpg", "b.png"]
    annotations.write_text('{"images": []}')
    assert main(argv) == 2  # a malformed annotation file is a clean error, not a traceback


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def coco_argv(images: Path, annotations: Path, out: Path, *extra: str) -> list[str]:
    return ["coco", "--images", str(images), "--annotations", str(annotations), "--out", str(out),
            "--workers", "1", "--no-progress", *extra]


def test_shards_cli_missing_image_folder_is_one_error_line(tmp_path, capsys):
    _, annotations = coco_tree(tmp_path)
    assert main(coco_argv(tmp_path / "no-such", annotations, tmp_path / "out")) == 2
    assert error_lines(capsys) == [f"error: --images {tmp_path / 'no-such'}: no such folder; check the path"]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_shards_cli_no_sample_written_is_an_error(tmp_path, capsys):
    _, annotations = coco_tree(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(coco_argv(tmp_path / "empty", annotations, tmp_path / "out", "--max-skipped", "1")) == 2
    (line,) = error_lines(capsys)
    assert "no sample written (5 listed, 5 skipped; first: a.jpg: missing image" in line


def test_shards_cli_too_many_skipped_is_an_error(tmp_path, capsys):
    images, annotations = coco_tree(tmp_path)  # 2 of 5 images missing or corrupt
    assert main(coco_argv(images, annotations, tmp_path / "default")) == 2  # default 0.01
    (line,) = error_lines(capsys)
    assert "2 of 5 listed samples skipped (40.0%, more than --max-skipped 0.01" in line
    assert main(coco_argv(images, annotations, tmp_path / "lenient", "--max-skipped", "0.4")) == 0
    assert load_dataset_info(tmp_path / "lenient").num_samples == 3


def test_shards_verify_fails_on_an_empty_data_set(tmp_path, capsys):
    write_dataset([], tmp_path / "empty", name="empty", class_names=["a"], modality="vector",
                  feature_dim=2)
    report = verify(tmp_path / "empty")
    assert not report.ok and any("no samples" in p for p in report.problems)
    assert main(["verify", str(tmp_path / "empty")]) == 1


def test_shards_cli_help_lists_every_source(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for source in ("coco", "voc", "nuswide", "mirflickr", "manifest", "arff", "digits", "verify"):
        assert source in text
    with pytest.raises(SystemExit):
        main(["nuswide", "--help"])
    assert "Concepts81.txt" in capsys.readouterr().out


def test_shards_digits_demo_set(tmp_path):
    from sklearn.datasets import load_digits

    start = time.perf_counter()
    assert (
        main(["digits", "--out", str(tmp_path / "digits"), "--workers", "2", "--no-progress"]) == 0
    )
    assert time.perf_counter() - start < 20
    train, test = (load_dataset_info(tmp_path / "digits" / s) for s in ("train", "test"))
    assert (train.num_samples, test.num_samples, train.class_names) == (
        2000,
        500,
        [str(d) for d in range(10)],
    )
    assert 1.5 < train.label_cardinality < 2.1 and min(train.class_counts) > 0
    digits = load_digits()
    scaled = np.rint(digits.images * (255.0 / 16.0)).reshape(len(digits.images), -1)
    from PIL import Image

    used = {}
    for split in ("train", "test"):
        ids = set()
        for sample in read_back(tmp_path / "digits" / split)[:40]:
            image = np.asarray(
                Image.open(io.BytesIO(sample["payload"])).convert("L"), dtype=np.float64
            )
            assert image.shape == (64, 64)
            found = set()
            for r in range(2):
                for c in range(
                    2
                ):  # the centre pixel of each 4x4 block is the tile's pixel (JPEG noise aside)
                    tile = image[
                        r * 32 + 2 : (r + 1) * 32 : 4, c * 32 + 2 : (c + 1) * 32 : 4
                    ].reshape(-1)
                    if tile.max() < 32:  # a blank tile (no digit drawn there)
                        continue
                    best = int(np.argmin(np.abs(scaled - tile).mean(axis=1)))
                    found.add(int(digits.target[best]))
                    ids.add(best)
            assert sorted(found) == sample["labels"]
        used[split] = ids
    assert not used["train"] & used["test"]  # disjoint halves of the sklearn digits


@needs_mulan
def test_shards_arff_real_yeast(tmp_path):
    arff, xml = MULAN / "yeast" / "yeast-train.arff", MULAN / "yeast" / "yeast.xml"
    out = tmp_path / "shards" / "yeast" / "train"
    assert (
        main(["arff", "--arff", str(arff), "--xml", str(xml), "--out", str(out), "--no-progress"])
        == 0
    )
    info = load_dataset_info(out)
    assert (info.num_samples, info.num_classes, info.feature_dim, info.modality) == (
        1500,
        14,
        103,
        "vector",
    )
    assert info.label_cardinality == pytest.approx(4.24, abs=0.02) and info.image is None
    samples = read_back(out)
    first_row = arff.read_text().split("@data", 1)[1].split()[0].split(",")
    x = np.load(io.BytesIO(samples[0]["payload"]), allow_pickle=False)
    assert x.dtype == np.float32 and x.shape == (103,)
    np.testing.assert_array_equal(x, np.asarray(first_row[:103], dtype=np.float32))
    assert samples[0]["labels"] == [j for j, v in enumerate(first_row[103:]) if v == "1"]
    assert verify(out).ok


@needs_mulan
def test_shards_arff_real_bibtex_sparse(tmp_path):
    arff, xml = MULAN / "bibtex" / "bibtex-train.arff", MULAN / "bibtex" / "bibtex.xml"
    start = time.perf_counter()
    assert (
        main(
            [
                "arff",
                "--arff",
                str(arff),
                "--xml",
                str(xml),
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    assert time.perf_counter() - start < 15
    info = load_dataset_info(tmp_path)
    assert (info.num_samples, info.num_classes, info.feature_dim) == (4880, 159, 1836)
    assert info.label_cardinality == pytest.approx(2.38, abs=0.01)
    first = read_back(tmp_path)[0]
    row = arff.read_text().split("@data", 1)[1].strip().splitlines()[0].strip("{}").split(",")
    entries = {int(i): float(v) for i, v in (item.split() for item in row)}
    x = np.load(io.BytesIO(first["payload"]), allow_pickle=False)
    assert set(np.flatnonzero(x).tolist()) == {i for i, v in entries.items() if i < 1836 and v}
    assert first["labels"] == sorted(i - 1836 for i, v in entries.items() if i >= 1836 and v)
