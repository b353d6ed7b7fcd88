"""CPU views: shapes, normalisation, augmentation frequencies, determinism, vector masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mlcdist.config import AugmentConfig
from mlcdist.data.augment import (
    IMAGENET_MEAN, IMAGENET_STD, decode_image, draft_side, eval_image_transform, image_views,
    pretrain_image_transform, random_keep_mask, vector_views)
from mlcdist.seeds import sample_seeds

N = 300  # samples for frequency estimates: std of a p=0.5 estimate is ~0.03


def image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.astype(np.uint8))


def only(**kw) -> AugmentConfig:
    """Every random op off except those named (crop kept to the whole image)."""
    base = dict(image_size=16, crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    return AugmentConfig(**{**base, **kw})


def views_of(img: Image.Image, cfg: AugmentConfig, n: int = N, salt: int = 0):
    seeds = sample_seeds(0, 0, torch.arange(n), salt)
    return image_views([img] * n, seeds, pretrain_image_transform(cfg))


def test_shape_dtype_and_normalisation():
    colour = np.array([200, 100, 50], dtype=np.float64)
    flat = image(np.broadcast_to(colour, (20, 24, 3)).copy())
    v1, v2 = views_of(flat, only(), n=4)
    assert v1.shape == v2.shape == (4, 3, 16, 16) and v1.dtype == torch.float32
    expect = (colour / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert torch.allclose(v1.mean(dim=(0, 2, 3)).double(), torch.tensor(expect), atol=1e-3)
    (ev,) = image_views([flat], torch.zeros(1, dtype=torch.int64), eval_image_transform(only()), 1)
    assert ev.shape == (1, 3, 16, 16) and torch.allclose(ev[0, :, 0, 0].double(), torch.tensor(expect), atol=1e-3)


def test_flip_frequency():
    half = np.zeros((16, 16, 3))
    half[:, 8:] = 255  # bright right half: a flip moves it left
    v1, v2 = views_of(image(half), only(flip_p=0.5))
    views = torch.cat([v1, v2])
    flipped = views[..., :8].mean(dim=(1, 2, 3)) > views[..., 8:].mean(dim=(1, 2, 3))
    assert abs(flipped.float().mean().item() - 0.5) < 0.08


def test_grayscale_and_jitter_frequencies():
    red = np.zeros((16, 16, 3))
    red[..., 0] = 220
    v1, _ = views_of(image(red), only(grayscale_p=0.2))
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    raw = v1 * std + mean  # back to [0, 1]
    gray = (raw.amax(1) - raw.amin(1)).amax(dim=(1, 2)) < 0.02
    assert abs(gray.float().mean().item() - 0.2) < 0.07
    calm, _ = views_of(image(red), only(), n=8)
    assert torch.allclose(calm, calm[:1].expand_as(calm))
    jittered, _ = views_of(image(red), only(jitter_p=0.8))
    changed = (jittered - calm[:1]).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert abs(changed.float().mean().item() - 0.8) < 0.07


def test_views_differ_and_are_reproducible():
    rng = np.random.default_rng(0)
    img = image(rng.integers(0, 256, (40, 40, 3)))
    state = torch.random.get_rng_state()
    a1, a2 = views_of(img, AugmentConfig(image_size=16), n=8)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    b1, b2 = views_of(img, AugmentConfig(image_size=16), n=8)
    c1, _ = views_of(img, AugmentConfig(image_size=16), n=8, salt=1)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2) and not torch.equal(a1, c1)
    transform = eval_image_transform(AugmentConfig(image_size=16))
    assert torch.equal(transform(img), transform(img))


def test_sample_seeds_are_distinct_and_non_negative():
    index = torch.arange(1000)
    s = sample_seeds(7, 1, index)
    assert (s >= 0).all() and s.unique().numel() == 1000
    assert torch.equal(s, sample_seeds(7, 1, index))
    assert (s != sample_seeds(7, 2, index)).all() and (s != sample_seeds(8, 1, index)).all()


def test_vector_masks_exact_ratio_and_uniform():
    seeds = sample_seeds(0, 0, torch.arange(2000))
    keep = random_keep_mask(seeds, 10, 0.5)
    assert (keep.sum(1) == 5).all()
    per_entry = keep.float().mean(0)
    assert (per_entry - 0.5).abs().max() < 0.05  # no entry favoured
    x = torch.rand(2000, 10) + 1
    v1, v2 = vector_views(x, seeds, 0.3)
    assert ((v1 == 0).sum(1) == 3).all() and ((v1 == x) | (v1 == 0)).all()
    assert (v1 != v2).any(1).float().mean() > 0.9  # two views mask differently


@pytest.mark.parametrize("dim,ratio", [(103, 0.5), (10, 0.3), (7, 0.0), (7, 1.0), (1, 0.5), (500, 0.25)])
def test_vector_mask_is_the_m_smallest_hashes(dim, ratio):
    """The kthvalue form equals the definition: drop the m smallest of splitmix64(seed + (j+1)*golden)."""
    from mlcdist.seeds import GOLDEN, splitmix64

    seeds = sample_seeds(3, 2, torch.arange(300))
    keys = splitmix64(seeds[:, None] + torch.arange(1, dim + 1, dtype=torch.int64)[None, :] * GOLDEN)
    drop = keys.argsort(dim=1)[:, : round(ratio * dim)]
    expected = torch.ones(300, dim, dtype=torch.bool).scatter_(1, drop, False)
    assert torch.equal(random_keep_mask(seeds, dim, ratio), expected)


def test_decode_draft_and_corrupt():
    buf = io.BytesIO()
    Image.fromarray(np.full((768, 1024, 3), 120, np.uint8)).save(buf, "JPEG", quality=90)
    img = decode_image(buf.getvalue(), 224)
    assert img.mode == "RGB" and 224 <= min(img.size) < 448  # DCT-reduced by 2, not below target
    assert min(decode_image(buf.getvalue(), 768).size) == 768
    assert draft_side(AugmentConfig(image_size=224, crop_scale=(0.25, 1.0)), pretrain=True) == 448
    with pytest.raises(OSError):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], 224)
