"""Corrupt or missing samples, per epoch: the loader counts them on each rank (``Loader.skipped``,
``mlcdist/data/pipeline.py``); at the end of every epoch (the last one too, which may stop
mid-epoch) the trainer sums them over the ranks with one all-reduce, reports them (a line and a
``metrics.jsonl`` record) and stops above ``data.max_skipped_fraction``.

A skipped sample's batch slot is refilled with another sample of the batch, so the step count
stays exact and a deleted shard would otherwise train on silently: the count is the only trace.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from mlcdist.errors import MlcdistError


class TooManySkipped(MlcdistError):
    """More corrupt or missing samples in an epoch than ``data.max_skipped_fraction`` allows."""


def loader_skipped(loader) -> int:
    """Samples the loader has skipped so far on this rank (0 for loaders that never skip)."""
    return int(getattr(loader, "skipped", 0))


def job_counts(skipped: int, samples: int, device: torch.device) -> tuple[int, int]:
    """``(skipped, samples)`` summed over every rank (one all-reduce; the same on all ranks)."""
    counts = torch.tensor([skipped, samples], dtype=torch.int64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    skipped, samples = counts.tolist()
    return int(skipped), int(samples)


def skip_record(epoch: int, step: int, skipped: int, samples: int) -> dict:
    """The ``metrics.jsonl`` record of an epoch's pass (``"event": "epoch"``; no ``loss``)."""
    return {"event": "epoch", "epoch": epoch, "step": step, "skipped": skipped, "samples": samples,
            "skipped_fraction": round(skipped / max(samples, 1), 6)}


def check_skipped(record: dict, allowed: float, hint: str) -> None:
    """Raise :class:`TooManySkipped` (on every rank alike) when the share is above ``allowed``."""
    if record["skipped"] > allowed * record["samples"]:
        raise TooManySkipped(
            f"epoch {record['epoch']}: {record['skipped']} of {record['samples']} samples "
            f"({100 * record['skipped_fraction']:.2f}%) were corrupt or missing and skipped, above "
            f"data.max_skipped_fraction={allowed}; check the shards (python -m tools.make_shards verify "
            f"DIR --decode) and re-convert, or raise data.max_skipped_fraction; {hint}")
