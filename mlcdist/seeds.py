"""Seeds derived from the recipe seed and the run's counters (one scheme per use)."""

from __future__ import annotations


def step_seed(seed: int, step: int, micro: int) -> int:
    """Seed of micro-batch ``micro`` at optimizer step ``step`` (MoCo's shuffle-BN permutation)."""
    return seed * 1_000_003 + step * 7919 + micro
