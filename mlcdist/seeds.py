"""Every seed of a run, derived from the recipe seed and the run's counters (one scheme per use).

==================  ==========================================================================
scheme              used for
==================  ==========================================================================
``mix_seed``        NumPy generators of the shard pipeline: shard order, reading order,
                    shuffle buffer, resampling; the device stage's per-(step, micro) seed
``sample_seeds``    per-sample view seeds (counter-based ``splitmix64``: any sample's views
                    can be redrawn from (seed, epoch, index, salt) alone, in any worker)
``epoch_seed``      the in-memory loaders' epoch permutation (``data/memory.py``)
``step_seed``       MoCo's shuffle-BN permutation of one micro-batch
==================  ==========================================================================

Values are pinned by ``tests/unit/test_seeds.py``: changing one changes data order and views,
and breaks the exact resume of runs started before the change.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (NumPy SeedSequence hashing; order matters)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


# --- counter-based randomness (vectorised splitmix64 on int64; overflow wraps) --------------------

def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


GOLDEN, _M1, _M2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(z: Tensor, s: int) -> Tensor:
    return (z >> s).bitwise_and_((1 << (64 - s)) - 1)  # logical shift on int64


def splitmix64(x: Tensor) -> Tensor:
    """Steele et al.'s splitmix64 finaliser applied elementwise (int64 in, int64 out).

    The vector masks hash every feature of an epoch's rows (bibtex: 8M a view), so this is a
    hot loop: on CPU it runs in NumPy on uint64, whose logical shifts and in-place ``out=``
    operations need 7 passes over memory instead of torch's 11 (2.5x faster on bibtex's 8M,
    the same bits); elsewhere in torch, in place on one fresh tensor. The masks themselves
    hash in cache-sized blocks: :func:`splitmix64_row_blocks`."""
    if x.device.type == "cpu":
        return torch.from_numpy(_splitmix64_numpy(x.numpy()))
    return _splitmix64_torch(x)


def _splitmix64_torch(x: Tensor) -> Tensor:
    z = x + GOLDEN
    z ^= _shr(z, 30)
    z *= _M1
    z ^= _shr(z, 27)
    z *= _M2
    z ^= _shr(z, 31)
    return z


_GOLDEN_U, _M1_U, _M2_U = (np.uint64(c % (1 << 64)) for c in (GOLDEN, _M1, _M2))


def splitmix64_row_blocks(rows: Tensor, columns: Tensor,
                          block_elements: int = 1 << 15) -> Iterator[tuple[slice, np.ndarray]]:
    """``splitmix64(rows[:, None] + columns[None, :])`` (CPU), as ``(row slice, int64 block)``
    pairs of whole rows, about ``block_elements`` keys each. The vector masks hash every feature
    of an epoch's rows (bibtex: 8M keys a view); a block of 256 KiB keeps the hash's seven passes
    in cache, 3.5x faster than one R x C array. Each block is overwritten by the next: use it
    before asking for the next one."""
    columns_u = columns.numpy().view(np.uint64) + _GOLDEN_U
    rows_u = rows.numpy().view(np.uint64)
    per_block = max(1, block_elements // max(len(columns_u), 1))
    buffer = np.empty((min(per_block, len(rows_u)), len(columns_u)), np.uint64)
    for start in range(0, len(rows_u), per_block):
        stop = min(start + per_block, len(rows_u))
        block = buffer[: stop - start]
        np.add(rows_u[start:stop, None], columns_u[None, :], out=block)
        yield slice(start, stop), _mix_in_place(block).view(np.int64)


def _splitmix64_numpy(x: np.ndarray) -> np.ndarray:
    z = np.empty(x.shape, np.uint64)  # the one fresh array (0-d too); uint64 wraps like int64
    np.add(x.view(np.uint64), _GOLDEN_U, out=z)
    return _mix_in_place(z).view(np.int64)


def _mix_in_place(z: np.ndarray) -> np.ndarray:
    """splitmix64's three xor-shift-multiply rounds on uint64 ``z`` (GOLDEN already added)."""
    shifted = np.empty_like(z)
    for shift, multiplier in ((30, _M1_U), (27, _M2_U), (31, None)):
        np.right_shift(z, np.uint64(shift), out=shifted)
        np.bitwise_xor(z, shifted, out=z)
        if multiplier is not None:
            np.multiply(z, multiplier, out=z)
    return z


def sample_seeds(seed: int, epoch: int, index: Tensor, salt: Tensor | int = 0) -> Tensor:
    """``h(h(h(seed) ^ epoch) ^ index) ^ salt`` hashed once more, as non-negative int64 seeds."""
    base = splitmix64(splitmix64(torch.tensor([seed], dtype=torch.int64)) ^ epoch)
    z = splitmix64(splitmix64(base ^ index.to(torch.int64)) ^ torch.as_tensor(salt, dtype=torch.int64))
    return z & ((1 << 63) - 1)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s sample permutation in the in-memory loaders."""
    return seed * 1_000_003 + epoch


def step_seed(seed: int, step: int, micro: int) -> int:
    """Seed of micro-batch ``micro`` at optimizer step ``step`` (MoCo's shuffle-BN permutation)."""
    return seed * 1_000_003 + step * 7919 + micro
