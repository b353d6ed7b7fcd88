"""One epoch's masked views of a vector set, as the in-memory pretraining loader draws them.

    OMP_NUM_THREADS=1 python bench/vector_views.py

For yeast-, scene- and bibtex-shaped rows (the train rows a study run keeps, standard normal
features) it times ``augment.vector_views`` (two views, 50% of each row masked, every feature
hashed with splitmix64), best of ``--rounds`` epochs, in two forms that give the same masks:

* before: the R x D keys hashed at once in torch int64, then NumPy's selection (2026-12-05);
* now: the keys hashed in NumPy uint64 in cache-sized blocks of rows, each block selected
  while it is in cache (``seeds.splitmix64_row_blocks``).

The last line is ``now vs before: X.XXx on the widest set``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlcdist import seeds  # noqa: E402
from mlcdist.data import augment  # noqa: E402

SHAPES = {"yeast": (1350, 103), "scene": (1090, 294), "bibtex": (4392, 1836)}


def keep_mask_before(row_seeds: torch.Tensor, dim: int, ratio: float) -> torch.Tensor:
    """``augment.random_keep_mask`` on CPU as it was: one R x D hash in torch, then a selection."""
    keys = seeds._splitmix64_torch(row_seeds[:, None] + torch.arange(1, dim + 1, dtype=torch.int64)[None, :]
                                   * seeds.GOLDEN)
    m = round(ratio * dim)
    kth = np.partition(keys.numpy(), m - 1, axis=1)[:, m - 1 : m]
    return keys > torch.from_numpy(kth)


def epoch_ms(x: torch.Tensor, before: bool, rounds: int) -> tuple[float, tuple[torch.Tensor, ...]]:
    current = augment.random_keep_mask
    if before:
        augment.random_keep_mask = keep_mask_before
    try:
        best, views = float("inf"), ()
        for epoch in range(rounds):
            start = time.perf_counter()
            views = augment.vector_views(x, seeds.sample_seeds(0, epoch, torch.arange(len(x))), 0.5)
            best = min(best, time.perf_counter() - start)
        return 1e3 * best, views
    finally:
        augment.random_keep_mask = current


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); best of {args.rounds} epochs")
    print(f"{'set':<8} {'rows x features':>16} {'before ms':>10} {'now ms':>8} {'ratio':>6}")
    ratio = 0.0
    for name, (rows, features) in SHAPES.items():
        x = torch.randn(rows, features, generator=torch.Generator().manual_seed(0))
        slow, slow_views = epoch_ms(x, True, args.rounds)
        fast, fast_views = epoch_ms(x, False, args.rounds)
        assert all(torch.equal(a, b) for a, b in zip(slow_views, fast_views)), f"{name}: the views differ"
        ratio = slow / fast
        print(f"{name:<8} {f'{rows} x {features}':>16} {slow:10.1f} {fast:8.1f} {ratio:5.2f}x")
    print(f"now vs before: {ratio:.2f}x on the widest set")


if __name__ == "__main__":
    main()
