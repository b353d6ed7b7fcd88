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
    """Steele et al.'s splitmix64 finaliser applied elementwise (int64 in, int64 out). In place
    on one fresh tensor: the vector masks hash every feature of an epoch's rows, and the
    temporaries of the out-of-place form took 40% of that time."""
    z = x + GOLDEN
    z ^= _shr(z, 30)
    z *= _M1
    z ^= _shr(z, 27)
    z *= _M2
    z ^= _shr(z, 31)
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
