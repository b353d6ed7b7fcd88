"""The built-in demo set: 2x2 mosaics of scikit-learn's bundled 8x8 digits.

Each sample tiles four digit images; its labels are the distinct digits shown (10 classes,
names "0".."9"). Train and test mosaics draw their digits from disjoint halves of the
1,797 bundled images, with a fixed seed, so the set is the same on every machine.
"""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np
from PIL import Image

from mlcdist.data.shards import EncodedSample

CLASS_NAMES = [str(d) for d in range(10)]


def digit_mosaics(split: str, count: int, *, size: int = 64, seed: int = 0,
                  quality: int = 90) -> Iterator[EncodedSample]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, targets = digits.images, digits.target
    order = np.random.default_rng(1234).permutation(len(images))
    pool = order[: len(order) // 2] if split == "train" else order[len(order) // 2:]
    rng = np.random.default_rng(seed + (0 if split == "train" else 1))
    for i in range(count):
        picks = rng.choice(pool, size=4, replace=True)
        tiles = (images[picks] / 16.0 * 255).astype(np.uint8)  # 4 x 8 x 8
        mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
        img = Image.fromarray(mosaic, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        yield EncodedSample("jpg", buf.getvalue(), sorted({int(t) for t in targets[picks]}),
                            f"digits-{split}-{i}")
