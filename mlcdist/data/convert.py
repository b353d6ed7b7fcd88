"""The converter's tail, shared by every source: a listing -> shards + ``dataset.json``, checked.

A conversion that wrote nothing, or that skipped more than ``max_skipped`` of the listed
samples (missing or corrupt images, non-finite vectors), fails with one
:class:`~mlcdist.errors.MlcdistError` line instead of leaving a quietly broken data set: a
wrong image folder skips every image as missing. The shards and ``dataset.json`` (whose
``skipped`` lists each reason) stay for inspection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlcdist.data.encode import EncodeSettings
from mlcdist.data.info import DatasetInfo
from mlcdist.data.shards import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES, write_shards
from mlcdist.data.sources.common import Listing
from mlcdist.errors import MlcdistError

DEFAULT_MAX_SKIPPED = 0.01  # fraction of the listed samples


@dataclass(frozen=True)
class WriterOptions:
    """The writer's settings (``tools.make_shards``' shared options)."""

    encode: EncodeSettings = EncodeSettings()
    workers: int = 1
    max_samples_per_shard: int = DEFAULT_MAX_SAMPLES
    max_shard_bytes: int = DEFAULT_MAX_BYTES
    drop_unlabelled: bool = False
    resume: bool = True
    progress: bool = False
    max_skipped: float = DEFAULT_MAX_SKIPPED


def check_written(info: DatasetInfo, listed: int, max_skipped: float) -> None:
    """Raise when no sample was written or more than ``max_skipped`` of ``listed`` were skipped."""
    skipped = len(info.skipped)
    first = f"; first: {info.skipped[0]['source']}: {info.skipped[0]['reason']}" if skipped else ""
    if info.num_samples == 0:
        raise MlcdistError(f"{info.root}: no sample written ({listed} listed, {skipped} skipped"
                           f"{first}); check the source paths")
    if skipped > max_skipped * listed:
        raise MlcdistError(
            f"{info.root}: {skipped} of {listed} listed samples skipped ({skipped / listed:.1%}, "
            f"more than --max-skipped {max_skipped:g}{first}); all are listed in dataset.json: "
            "fix the inputs or raise --max-skipped")


def convert(listing: Listing, out: Path, options: WriterOptions, name: str,
            report: Callable[[DatasetInfo], None] = lambda info: None) -> DatasetInfo:
    """Write ``listing`` to ``out`` with ``options``, ``report`` the result (a summary table),
    then :func:`check_written`."""
    if options.drop_unlabelled:
        listing = listing.without_unlabelled()
    info = write_shards(
        listing.specs, out, listing.class_names, name=name, modality=listing.modality,
        source=listing.source, feature_dim=listing.feature_dim, encode=options.encode,
        workers=options.workers, max_samples_per_shard=options.max_samples_per_shard,
        max_shard_bytes=options.max_shard_bytes, resume=options.resume, progress=options.progress)
    report(info)
    check_written(info, len(listing.specs), options.max_skipped)
    return info
