"""The one entry point to the read side: ``make_loader`` picks the loader for a location.

Vector shards that fit in memory go to ``resident.py`` (read once, batched by indexing); every
other set streams through ``pipeline.py``. Both deliver the same batches in the same order (see
``pipeline``'s docstring for the batch contract), so callers never need to know which one they got.
"""

from __future__ import annotations

from typing import Optional

from mlcdist.config import AugmentConfig, DataConfig
from mlcdist.data import resident as res
from mlcdist.data.pipeline import Loader, Mode, ShardStream, resolve
from mlcdist.data.split import HeldOut, carve_mask
from mlcdist.parallel.collectives import world


def make_loader(location: str, data: DataConfig, augment: AugmentConfig, *, mode: Mode,
                rank: Optional[int] = None, world_size: Optional[int] = None,
                epoch: int = 0, skip_batches: int = 0, resident: Optional[bool] = None,
                hold_out: Optional[tuple[float, int]] = None) -> Loader:
    """Batches of ``location`` for this rank (see module docstring). ``rank``/``world_size``
    default to the initialised process group (else 0/1). Do not ``accelerate.prepare`` it.

    ``resident``: read vector shards once into memory and batch by indexing (``resident.py``;
    the same batches as streaming). ``None`` (default): when the vectors fit in
    ``resident.RESIDENT_MAX_BYTES``; ``False``: always stream.

    ``hold_out=(fraction, seed)``: no epoch reads the rows ``split.carve_mask(N, fraction, seed)``
    picks (the validation carve ``mlcdist.eval`` makes with ``eval.val_fraction``, ``eval.seed``);
    ``loader.stream.held`` describes them."""
    if mode not in ("pretrain", "eval"):
        raise ValueError(f"mode {mode!r} must be 'pretrain' or 'eval'")
    group_rank, group_size = world()
    rank = group_rank if rank is None else rank
    world_size = group_size if world_size is None else world_size
    info, shards = resolve(location)
    held = None
    if hold_out is not None:
        fraction, seed = hold_out
        held = HeldOut.of(carve_mask(info.num_samples, fraction, seed), shards.sizes, shards.offsets)
    if resident is None:
        resident = res.fits_in_memory(info)
    if resident and info.modality == "vector":
        stream = res.ResidentVectors(info, shards, data, augment, mode, rank, world_size, held)
        loader: Loader = res.ResidentLoader(stream)
    else:
        loader = Loader(ShardStream(info, shards, data, augment, mode, rank, world_size, held))
    loader.set_epoch(epoch, skip_batches)
    return loader
