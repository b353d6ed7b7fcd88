"""The built-in demo set: 2x2 mosaics of scikit-learn's bundled 8x8 digits.

Sample ``i`` tiles four digit images ``d_0..d_3`` (drawn without replacement from the split's
pool); its labels are the distinct digits shown, ``{y(d_0), .., y(d_3)}`` (10 classes named
"0".."9", 1 to 4 labels per sample). Grey levels 0..16 map to ``round(v * 255 / 16)``; the
16x16 mosaic is upscaled by nearest neighbour to ``size x size`` and repeated into RGB so the
image pipeline is exercised. Train and test draw from disjoint halves of the 1,797 bundled
images (a permutation seeded by ``seed``), so no digit image appears in both splits.
"""

from __future__ import annotations

import numpy as np

from mlcdist.data.shards import SampleSpec
from mlcdist.data.sources.common import Listing, label_tuples

CLASS_NAMES = [str(d) for d in range(10)]
SPLITS = ("train", "test")


def digit_mosaics(
    split: str, count: int, *, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` mosaics (``count x size x size x 3`` uint8) and ``count x 10`` multi-hot labels."""
    from sklearn.datasets import load_digits  # lazy: only the demo needs scikit-learn

    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if size < 16:
        raise ValueError(f"size={size}: mosaics are 16x16 digits, use size >= 16")
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    half = len(order) // 2
    pool = order[:half] if split == "train" else order[half:]
    rng = np.random.default_rng([seed, SPLITS.index(split) + 1])
    picks = pool[np.argsort(rng.random((count, len(pool))), axis=1)[:, :4]]  # count x 4, distinct
    tiles = np.rint(digits.images[picks] * (255.0 / 16.0)).astype(np.uint8)  # count x 4 x 8 x 8
    mosaic = tiles.reshape(count, 2, 2, 8, 8).transpose(0, 1, 3, 2, 4).reshape(count, 16, 16)
    nearest = (np.arange(size) * 16) // size
    images = np.repeat(mosaic[:, nearest][:, :, nearest][..., None], 3, axis=3)
    multi_hot = np.zeros((count, 10), dtype=bool)
    np.put_along_axis(multi_hot, digits.target[picks], True, axis=1)
    return images, multi_hot


def list_digits(split: str, count: int, *, size: int = 64, seed: int = 0) -> Listing:
    """The demo split as a :class:`Listing` of raw-pixel samples."""
    images, multi_hot = digit_mosaics(split, count, size=size, seed=seed)
    specs = [
        SampleSpec(source=f"digits-{split}-{i}", labels=labels, pixels=images[i])
        for i, labels in enumerate(label_tuples(multi_hot))
    ]
    source = {"kind": "digits", "split": split, "seed": seed, "size": size}
    return Listing(list(CLASS_NAMES), specs, source)
