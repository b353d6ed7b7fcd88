"""The built-in demo set: 2x2 mosaics of scikit-learn's bundled 8x8 digits.

Sample ``i`` has four tiles; each shows a digit image with probability ``tile_prob`` (at least
one always does) and is black otherwise. Digit images are drawn without replacement from the
split's pool; the labels are the distinct digits shown (10 classes named "0".."9", 1 to 4
labels per sample, about 1.8 at the default ``tile_prob=0.45``). Sparse labels matter: when
every tile is filled (3.5 of 10 labels per sample) each positive set spans a third of the
candidates and MulSupCon's optimum lies barely below the collapsed ln(N); real image sets
carry 1.5-3 of 20-365 labels.

Grey levels 0..16 map to ``round(v * 255 / 16)``; the 16x16 mosaic is upscaled by nearest
neighbour to ``size x size`` and repeated into RGB so the image pipeline is exercised.
``vectors=True`` writes the same mosaics as 256-d grey-level vectors in [0, 1] instead (the
vector demo: an MLP learns them in seconds on a CPU). Train and test draw from disjoint halves
of the 1,797 bundled images (a permutation seeded by ``seed``), so no digit image appears in
both splits.
"""

from __future__ import annotations

import numpy as np

from mlcdist.data.encode import SampleSpec
from mlcdist.data.sources.common import Listing, label_tuples

CLASS_NAMES = [str(d) for d in range(10)]
SPLITS = ("train", "test")


def digit_mosaics(
    split: str, count: int, *, size: int = 64, seed: int = 0, tile_prob: float = 0.45
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` mosaics (``count x size x size x 3`` uint8) and ``count x 10`` multi-hot labels."""
    from sklearn.datasets import load_digits  # lazy: only the demo needs scikit-learn

    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if size < 16:
        raise ValueError(f"size={size}: mosaics are 16x16 digits, use size >= 16")
    if not 0 < tile_prob <= 1:
        raise ValueError(f"tile_prob={tile_prob}: must be in (0, 1]")
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    half = len(order) // 2
    pool = order[:half] if split == "train" else order[half:]
    rng = np.random.default_rng([seed, SPLITS.index(split) + 1])
    picks = pool[np.argsort(rng.random((count, len(pool))), axis=1)[:, :4]]  # count x 4, distinct
    shown = rng.random((count, 4)) < tile_prob
    shown[np.arange(count), rng.integers(0, 4, count)] |= ~shown.any(axis=1)
    tiles = np.rint(digits.images[picks] * (255.0 / 16.0)).astype(np.uint8)  # count x 4 x 8 x 8
    tiles *= shown[:, :, None, None]
    mosaic = tiles.reshape(count, 2, 2, 8, 8).transpose(0, 1, 3, 2, 4).reshape(count, 16, 16)
    nearest = (np.arange(size) * 16) // size
    images = np.repeat(mosaic[:, nearest][:, :, nearest][..., None], 3, axis=3)
    multi_hot = np.zeros((count, 10), dtype=bool)
    rows = np.repeat(np.arange(count), 4).reshape(count, 4)
    multi_hot[rows[shown], digits.target[picks][shown]] = True
    return images, multi_hot


def list_digits(split: str, count: int, *, size: int = 64, seed: int = 0,
                tile_prob: float = 0.45, vectors: bool = False) -> Listing:
    """The demo split as a :class:`Listing` of raw-pixel samples, or with ``vectors`` of the
    native 16x16 mosaics flattened to 256 grey levels in [0, 1] (``size`` is then ignored)."""
    images, multi_hot = digit_mosaics(split, count, size=16 if vectors else size, seed=seed,
                                      tile_prob=tile_prob)
    labels = label_tuples(multi_hot)
    source = {"kind": "digits", "split": split, "seed": seed, "tile_prob": tile_prob}
    if vectors:
        grey = images[..., 0].reshape(count, -1).astype(np.float32) / 255.0
        specs = [SampleSpec(source=f"digits-{split}-{i}", labels=y, vector=grey[i])
                 for i, y in enumerate(labels)]
        return Listing(list(CLASS_NAMES), specs, {**source, "form": "vectors"},
                       modality="vector", feature_dim=grey.shape[1])
    specs = [SampleSpec(source=f"digits-{split}-{i}", labels=y, pixels=images[i])
             for i, y in enumerate(labels)]
    return Listing(list(CLASS_NAMES), specs, {**source, "size": size})
