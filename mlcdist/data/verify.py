"""``verify``: re-read a shard folder and check it against its ``dataset.json``."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mlcdist.data.info import SHARD_PATTERN, DatasetInfo, ShardEntry, load_dataset_info
from mlcdist.data.records import (LABELS_MEMBER, META_MEMBER, decode_labels, decode_vector, read_tar,
                                  sample_key, sha256_file)


@dataclass
class ShardCheck:
    """What :func:`verify` found in one shard file."""

    file: str
    expected: int
    found: int = 0
    sha256_ok: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    shards: list[ShardCheck]
    problems: list[str]  # dataset-level mismatches (totals, class counts, stray files)

    @property
    def ok(self) -> bool:
        return not self.problems and all(not s.problems for s in self.shards)


def _sample_labels(key: str, parts: dict[str, bytes], info: DatasetInfo) -> list[int]:
    """The sample's label list; raises ValueError when it is missing or not valid class indices."""
    if LABELS_MEMBER not in parts:
        raise ValueError(f"{key}: no {LABELS_MEMBER} member")
    try:
        return decode_labels(parts[LABELS_MEMBER], info.num_classes, canonical=True)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


def _check_payload(key: str, parts: dict[str, bytes], info: DatasetInfo, decode: bool) -> None:
    """Members, meta and the image/vector payload of one sample; raises ValueError naming the problem."""
    data_ext = "jpg" if info.modality == "image" else "npy"
    if set(parts) != {data_ext, LABELS_MEMBER, META_MEMBER}:
        raise ValueError(
            f"{key}: members {sorted(parts)}, expected {data_ext}, {LABELS_MEMBER}, {META_MEMBER}"
        )
    if not isinstance(json.loads(parts[META_MEMBER]), dict):
        raise ValueError(f"{key}: meta.json is not a JSON object")
    if data_ext == "npy":
        vector = decode_vector(parts["npy"])
        if vector.dtype != np.float32 or vector.shape != (info.feature_dim,):
            raise ValueError(
                f"{key}: npy is {vector.dtype} {vector.shape}, "
                f"expected float32 ({info.feature_dim},)"
            )
        bad = int(np.count_nonzero(~np.isfinite(vector)))
        if bad:  # a NaN/inf input poisons every loss it touches (and a resume hits it again)
            raise ValueError(f"{key}: npy has {bad} non-finite values (NaN/inf); fix or drop the input and re-convert")
    elif decode:
        try:
            Image.open(io.BytesIO(parts["jpg"])).load()
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors do not name the sample
            raise ValueError(f"{key}: jpg does not decode ({err})") from None
    elif not parts["jpg"].startswith(b"\xff\xd8"):
        raise ValueError(f"{key}: jpg payload does not start with a JPEG marker")


def _check_shard(
    path: Path,
    entry: ShardEntry,
    info: DatasetInfo,
    first_key: int,
    decode: bool,
    counts: np.ndarray,
) -> ShardCheck:
    check = ShardCheck(entry.file, entry.num_samples)
    if not path.exists():
        check.problems.append("missing file")
        return check
    check.sha256_ok = sha256_file(path) == entry.sha256
    if not check.sha256_ok:
        check.problems.append("sha256 differs from dataset.json (shard modified or truncated)")
    try:
        samples = read_tar(path)
    except (tarfile.TarError, OSError) as err:
        check.problems.append(f"unreadable tar: {err}")
        return check
    check.found = len(samples)
    if check.found != entry.num_samples:
        check.problems.append(f"{check.found} samples, dataset.json says {entry.num_samples}")
    expected_keys = [sample_key(k) for k in range(first_key, first_key + check.found)]
    if list(samples) != expected_keys:
        check.problems.append(f"keys are not {expected_keys[:1]}..{expected_keys[-1:]} in order")
    for key, parts in samples.items():
        # labels are counted even when the payload is bad: dataset.json counts every written
        # sample, so a bad payload must not also show up as class-count differences
        try:
            counts[_sample_labels(key, parts, info)] += 1
        except ValueError as err:
            check.problems.append(str(err))
        try:
            _check_payload(key, parts, info, decode)
        except (ValueError, OSError) as err:
            check.problems.append(str(err))
    return check


def verify(location: str | Path, *, decode_images: bool = False) -> VerifyReport:
    """Re-read every shard and compare with ``dataset.json``: sha256, sample counts, keys,
    label ranges, payload types, and the per-class counts / cardinality recomputed from scratch."""
    info = load_dataset_info(str(location))
    counts = np.zeros(info.num_classes, dtype=np.int64)
    checks, problems, first_key = [], [], 0
    for entry in info.shards:
        check = _check_shard(
            Path(info.root) / entry.file, entry, info, first_key, decode_images, counts
        )
        checks.append(check)
        first_key += check.found
    if first_key == 0:
        problems.append("no samples in the shards: an empty data set cannot be trained or "
                        "evaluated; re-run the converter on a source with samples")
    if first_key != info.num_samples:
        problems.append(f"{first_key} samples in shards, dataset.json says {info.num_samples}")
    if counts.tolist() != list(info.class_counts):
        diff = np.flatnonzero(counts != np.asarray(info.class_counts))
        problems.append(
            f"class counts recomputed from shards differ for classes {diff[:5].tolist()}"
        )
    cardinality = float(counts.sum()) / max(first_key, 1)
    if abs(cardinality - info.label_cardinality) > 1e-5:
        problems.append(
            f"label cardinality is {cardinality:.6f}, dataset.json says {info.label_cardinality}"
        )
    listed = {e.file for e in info.shards}
    root = Path(info.root)
    stray = sorted(
        p.name for p in root.iterdir() if SHARD_PATTERN.fullmatch(p.name) and p.name not in listed
    )
    if stray:
        problems.append(f"shard files not listed in dataset.json: {stray[:5]}")
    return VerifyReport(checks, problems)
