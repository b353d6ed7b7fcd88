"""CPU views: the paper's two-view image augmentation, vector masking and eval transforms.

Images follow MoCo v2 / MulSupCon: random resized crop (scale ``crop_scale``), colour jitter
(p=``jitter_p``), random grayscale (p=``grayscale_p``), horizontal flip (p=``flip_p``), then
ImageNet normalisation (one in-place op per batch). Decoding and transforms use PIL: on
341x256 q90 JPEGs at 224 px, one thread, ``torchvision.io.decode_jpeg`` decodes ~1.4x faster
than PIL (see ``bench/loader.py``), but the v2 colour kernels on uint8 tensors are slower (hue
5.0 vs 2.2 ms per view), so PIL end to end won (98 vs 88 two-view img/s). Vectors get independent random masks
that zero ``round(mask_ratio * D)`` entries per view.

Randomness is a pure function of ``(seed, epoch, sample index, salt)``
(``mlcdist.seeds.sample_seeds``), so a resumed run or a different worker count sees identical
views of the same sample.
"""

from __future__ import annotations

import io
import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from mlcdist.config import AugmentConfig
from mlcdist.seeds import GOLDEN, splitmix64, splitmix64_row_blocks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
_INV_STD_255 = 1 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)


def pretrain_image_transform(cfg: AugmentConfig) -> Callable:
    """MoCo v2 order: crop, jitter (p), grayscale (p), flip (p) -> uint8 ``3 x S x S`` tensor
    (``normalize_batch`` finishes the batch in one vectorised op)."""
    return v2.Compose([
        v2.RandomResizedCrop(cfg.image_size, scale=cfg.crop_scale, antialias=True),
        v2.RandomApply([v2.ColorJitter(*cfg.jitter)], p=cfg.jitter_p),
        v2.RandomGrayscale(cfg.grayscale_p),
        v2.RandomHorizontalFlip(cfg.flip_p),
        v2.PILToTensor(),
    ])


def eval_image_transform(cfg: AugmentConfig) -> Callable:
    """Resize the shorter side to ``image_size``, centre crop ``image_size`` -> uint8 tensor."""
    return v2.Compose([v2.Resize(cfg.image_size, antialias=True), v2.CenterCrop(cfg.image_size), v2.PILToTensor()])


def normalize_batch(images: Tensor) -> Tensor:
    """uint8 ``B x 3 x H x W`` -> float32 ``(x/255 - mean) / std`` with the ImageNet statistics."""
    return images.float().sub_(_MEAN_255).mul_(_INV_STD_255)  # in place: 5x faster than (x-m)/s


def draft_side(cfg: AugmentConfig, pretrain: bool) -> int:
    """Smallest shorter side worth decoding: a crop of area fraction ``s`` has side ``sqrt(s)``
    of the image, so ``image_size / sqrt(min scale)`` keeps even the smallest crop at full detail."""
    return cfg.image_size if not pretrain else math.ceil(cfg.image_size / math.sqrt(cfg.crop_scale[0]))


def decode_image(data: bytes, min_side: int) -> Image.Image:
    """JPEG/PNG bytes -> RGB PIL image; JPEGs are DCT-downscaled (``draft``) by powers of two
    while both sides stay >= ``min_side``. Raises ``OSError``/``ValueError`` on corrupt data."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft("RGB", (min_side, min_side))
    return image.convert("RGB")  # forces the full decode, so truncation raises here


def random_keep_mask(seeds: Tensor, dim: int, ratio: float) -> Tensor:
    """``B x D`` bool, False at exactly ``m = round(ratio * D)`` entries per row: the ``m``
    smallest of ``splitmix64(seed_b + (j+1) * golden)`` over ``j`` (a seeded random subset)."""
    m = round(ratio * dim)
    if m == 0:
        return torch.ones(seeds.shape[0], dim, dtype=torch.bool, device=seeds.device)
    offsets = torch.arange(1, dim + 1, dtype=torch.int64, device=seeds.device) * GOLDEN
    # splitmix64 is a bijection and the D inputs of a row differ, so the keys are distinct and
    # "above the m-th smallest" is exactly "not among the m smallest". A selection, not a sort:
    # NumPy's introselect takes 1/6 of argsort's time on yeast's 103 features (kthvalue 1/2).
    if seeds.device.type != "cpu":
        keys = splitmix64(seeds[:, None] + offsets[None, :])
        return keys > keys.kthvalue(m, dim=1, keepdim=True).values
    keep = np.empty((seeds.shape[0], dim), dtype=bool)
    for rows, keys in splitmix64_row_blocks(seeds, offsets):  # cache-sized blocks of rows
        np.greater(keys, np.partition(keys, m - 1, axis=1)[:, m - 1 : m], out=keep[rows])
    return torch.from_numpy(keep)


def vector_views(x: Tensor, seeds: Tensor, ratio: float, views: int = 2) -> tuple[Tensor, ...]:
    """``views`` copies of ``x`` (B x D), each with its own random mask zeroing ``ratio`` of entries."""
    return tuple(x * random_keep_mask(splitmix64(seeds + v), x.shape[1], ratio) for v in range(views))


def image_views(images: Sequence[Image.Image], seeds: Tensor, transform: Callable, views: int = 2) -> tuple[Tensor, ...]:
    """Apply ``transform`` ``views`` times per image with the global torch RNG seeded per sample
    (torchvision v2 draws from it), then normalise; the caller's RNG state is restored afterwards."""
    out: list[list[Tensor]] = [[] for _ in range(views)]
    with torch.random.fork_rng(devices=[]):
        for image, seed in zip(images, seeds.tolist()):
            torch.manual_seed(seed)
            for v in range(views):
                out[v].append(transform(image))
    return tuple(normalize_batch(torch.stack(o)) for o in out)
