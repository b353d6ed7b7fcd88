"""Device views on CPU: torchvision's crop sampling, op rates, colour ops, CPU-path agreement,
determinism, raw-JPEG loader batches and the trainer switch (augment.device=gpu)."""

from __future__ import annotations

import dataclasses
import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from support.shardgen import jpeg_bytes, write_split

from mlcdist.config import AugmentConfig, DataConfig, from_dict
from mlcdist.data import gpu_augment as ga
from mlcdist.data.augment import (
    IMAGENET_MEAN, IMAGENET_STD, image_views, pretrain_image_transform)
from mlcdist.data.loaders import make_loader
from mlcdist.seeds import sample_seeds

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def only(**kw) -> AugmentConfig:
    """Every random op off except those named; a square image is then cropped whole."""
    base = dict(image_size=16, crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    return AugmentConfig(**{**base, **kw})


def pixels(views: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: values in [0, 1]."""
    return views * STD + MEAN


def encode(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def raw_batch(blobs: list[bytes]) -> dict:
    data, sizes = ga.pack_jpegs(blobs)
    n = len(blobs)
    return {"jpeg": data, "jpeg_sizes": sizes, "labels": torch.eye(n), "index": torch.arange(n)}


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    rng = np.random.default_rng(1)
    return [jpeg_bytes(rng, size) for size in [(48, 40), (40, 56), (64, 48), (36, 36)] * 2]


# --- parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize("height,width", [(100, 150), (120, 40)])
def test_crop_sampling_matches_torchvision(height, width):
    n, scale = 3000, (0.2, 1.0)
    ours = ga.sample_crop_boxes(torch.full((n,), height), torch.full((n,), width), scale, gen())
    tv = v2.RandomResizedCrop(8, scale=scale)
    torch.manual_seed(0)
    ref = torch.tensor([[p["top"], p["left"], p["height"], p["width"]]
                        for p in (tv.make_params([torch.zeros(3, height, width)]) for _ in range(n))],
                       dtype=torch.float64)

    def stats(boxes):
        top, left, h, w = boxes.unbind(1)
        area, log_ratio = h * w / (height * width), torch.log(w / h)
        centre_y, centre_x = (top + h / 2) / height, (left + w / 2) / width
        hist = torch.histc(area, bins=5, min=0, max=1) / n
        return torch.cat([torch.stack([x.mean() for x in (area, log_ratio, centre_y, centre_x)]),
                          torch.stack([area.std(), log_ratio.std()]), hist])

    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    torch.testing.assert_close(stats(ours), stats(ref), atol=0.03, rtol=0)


def test_crop_fallback_is_torchvisions_central_crop():
    # 10 x 200: no crop of area >= 20% with aspect <= 4/3 fits, so all 10 tries fail
    ours = ga.sample_crop_boxes(torch.tensor([10, 200]), torch.tensor([200, 10]), (0.2, 1.0), gen())
    tv = v2.RandomResizedCrop(8, scale=(0.2, 1.0))
    for k, (h, w) in enumerate([(10, 200), (200, 10)]):
        p = tv.make_params([torch.zeros(3, h, w)])
        assert ours[k].tolist() == [p["top"], p["left"], p["height"], p["width"]]


def test_jitter_factor_ranges_order_and_rate():
    cfg = AugmentConfig(jitter=(0.4, 0.3, 0.2, 0.1), jitter_p=0.8)
    factors, order = ga.sample_jitter(20000, cfg, gen())
    jittered = (factors != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(1)
    assert abs(jittered.float().mean().item() - 0.8) < 0.015
    lo, hi = factors[jittered].amin(0), factors[jittered].amax(0)
    torch.testing.assert_close(lo, torch.tensor([0.6, 0.7, 0.8, -0.1]), atol=2e-3, rtol=0)
    torch.testing.assert_close(hi, torch.tensor([1.4, 1.3, 1.2, 0.1]), atol=2e-3, rtol=0)
    assert (order.sort(1).values == torch.arange(4)).all()  # every row a permutation
    share = torch.stack([(order == op).float().mean(0) for op in range(4)])  # op x position
    torch.testing.assert_close(share, torch.full((4, 4), 0.25), atol=0.015, rtol=0)


# --- pixel ops -----------------------------------------------------------------------------------

def test_colour_ops_match_torchvision_functional():
    x = torch.rand(5, 3, 9, 7, generator=gen())
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(5, 1)
    refs = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for op, (value, ref) in enumerate(zip([1.3, 0.7, 1.25, 0.08], refs)):
        factors = identity.clone()
        factors[:, op] = value
        order = torch.tensor([op] + [o for o in range(4) if o != op]).repeat(5, 1)
        out = ga.color_jitter(x, factors, order)
        expect = torch.stack([ref(im, value) for im in x])
        # 1e-4: torchvision's tensor gray weighs R by 0.2989, ours by PIL's 0.299 (the CPU path)
        torch.testing.assert_close(out, expect, atol=1e-4, rtol=0, msg=f"op {op}")
    x[0, :, 0, :3] = torch.tensor([[0.3, 0.0, 0.0], [0.9, 0.5, 0.0], [0.0, 0.0, 0.2]]).T  # zeros, ties
    torch.testing.assert_close(ga.hsv_to_rgb(ga.rgb_to_hsv(x)), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ga.rgb_to_hsv(x), TF._color._rgb_to_hsv(x), atol=1e-6, rtol=0)
    u8 = torch.randint(0, 256, (3, 6, 5), dtype=torch.uint8, generator=gen())
    pil_gray = torch.from_numpy(np.asarray(Image.fromarray(u8.permute(1, 2, 0).numpy()).convert("L")))
    torch.testing.assert_close(ga.gray(u8[None] / 255)[0, 0] * 255, pil_gray.float(), atol=0.5, rtol=0)


def test_jitter_order_matters_and_is_per_sample():
    x = torch.rand(2, 3, 5, 5, generator=gen())
    factors = torch.tensor([[1.4, 1.0, 1.0, 0.1]] * 2)  # brightness then hue vs hue then brightness
    out = ga.color_jitter(x, factors, torch.tensor([[0, 3, 1, 2], [3, 0, 1, 2]]))
    bh = TF.adjust_hue(TF.adjust_brightness(x[0], 1.4), 0.1)
    hb = TF.adjust_brightness(TF.adjust_hue(x[1], 0.1), 1.4)
    torch.testing.assert_close(out[0], bh, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], hb, atol=1e-5, rtol=0)


def test_crop_resize_reads_exact_pixels():
    image = torch.randint(0, 256, (3, 12, 10), dtype=torch.uint8, generator=gen())
    boxes = torch.tensor([[0.0, 0.0, 12.0, 10.0], [2.0, 3.0, 6.0, 6.0]])  # top, left, h, w
    whole = ga.resized_crops([image], boxes[:1], torch.tensor([0]), 10)  # 12 x 10 -> 10 x 10
    part = ga.resized_crops([image[:, :8, :8], image], boxes[1:], torch.tensor([1]), 6)
    torch.testing.assert_close(part[0] * 255, image[:, 2:8, 3:9].float(), atol=1e-3, rtol=0)
    assert whole.shape == (1, 3, 10, 10) and 0 <= whole.min() and whole.max() <= 1


# --- whole views ----------------------------------------------------------------------------------

def test_shapes_dtype_and_determinism(photos):
    cfg = AugmentConfig(image_size=24)
    a = ga.device_views(raw_batch(photos), cfg, "cpu", seed=5)
    b = ga.device_views(raw_batch(photos), cfg, "cpu", seed=5)
    c = ga.device_views(raw_batch(photos), cfg, "cpu", seed=6)
    v1, v2_ = a["views"]
    assert v1.shape == v2_.shape == (len(photos), 3, 24, 24) and v1.dtype == torch.float32
    assert torch.equal(v1, b["views"][0]) and torch.equal(v2_, b["views"][1])
    assert not torch.allclose(v1, c["views"][0]) and not torch.allclose(v1, v2_)
    assert torch.equal(a["labels"], torch.eye(len(photos)))


def test_flip_grayscale_jitter_rates():
    rng = np.random.default_rng(0)
    left_dark = np.concatenate([np.full((32, 16, 3), [40, 90, 160]), np.full((32, 16, 3), [220, 180, 60])], 1)
    blobs = [encode(left_dark + rng.integers(-5, 6, left_dark.shape))] * 200
    images, _ = ga.decode_jpegs(ga.unpack_jpegs(*ga.pack_jpegs(blobs)), "cpu")
    for p in (0.0, 0.5, 1.0):
        x = pixels(torch.cat(ga.two_views(images, only(flip_p=p), gen())))
        flipped = x[..., :8].mean((1, 2, 3)) > x[..., 8:].mean((1, 2, 3))
        assert abs(flipped.float().mean().item() - p) < 0.07
    x = pixels(torch.cat(ga.two_views(images, only(grayscale_p=0.2), gen())))
    is_gray = (x.amax(1) - x.amin(1)).amax((1, 2)) < 1e-4
    assert abs(is_gray.float().mean().item() - 0.2) < 0.06
    plain = torch.cat(ga.two_views(images, only(), gen()))
    x = torch.cat(ga.two_views(images, only(jitter_p=0.8), gen()))
    changed = (x - plain).abs().amax((1, 2, 3)) > 1e-3
    assert abs(changed.float().mean().item() - 0.8) < 0.06


def test_deterministic_ops_equal_cpu_path():
    rng = np.random.default_rng(3)
    array = rng.integers(0, 256, (16, 16, 3))
    cfg = only(flip_p=1.0, grayscale_p=1.0)  # whole image, flipped, gray: no randomness left
    data = encode(array)
    cpu = image_views([Image.open(io.BytesIO(data)).convert("RGB")], sample_seeds(0, 0, torch.arange(1)),
                      pretrain_image_transform(cfg))
    images, _ = ga.decode_jpegs(ga.unpack_jpegs(*ga.pack_jpegs([data])), "cpu")
    ours = ga.two_views(images, cfg, gen())
    for a, b in zip(cpu, ours):  # PIL rounds the gray to uint8: at most half a level apart
        torch.testing.assert_close(pixels(b), pixels(a), atol=0.6 / 255 + 1e-5, rtol=0)


def view_stats(views: torch.Tensor) -> torch.Tensor:
    """Per view: brightness, contrast, colourfulness, sharpness, red-minus-blue (V x 5)."""
    x = pixels(views)
    g = ga.gray(x)
    return torch.stack([g.mean((1, 2, 3)), g.std((1, 2, 3)), (x.amax(1) - x.amin(1)).mean((1, 2)),
                        (g[..., 1:] - g[..., :-1]).abs().mean((1, 2, 3)),
                        x[:, 0].mean((1, 2)) - x[:, 2].mean((1, 2))], 1)


def test_pixel_statistics_agree_with_cpu_path(photos):
    cfg = AugmentConfig(image_size=24)
    blobs = photos * 40  # 640 views per path
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    cpu = view_stats(torch.cat(image_views(pil, sample_seeds(0, 0, torch.arange(len(pil))),
                                           pretrain_image_transform(cfg))))
    mean, std = cpu.mean(0), cpu.std(0)

    def gap(aug: AugmentConfig) -> float:
        """Largest difference of the per-view statistics' means and stds, in CPU-path stds."""
        ours = view_stats(torch.cat(ga.device_views(raw_batch(blobs), aug, "cpu", seed=1)["views"]))
        return torch.cat([(ours.mean(0) - mean) / std, (ours.std(0) - std) / std]).abs().max().item()

    # seed-to-seed noise of either path is ~0.07-0.09 stds here
    assert gap(cfg) < 0.12
    # and the comparison has power: each of these changes is caught
    for changed in ({"jitter_p": 0.0}, {"grayscale_p": 0.0}, {"crop_scale": (0.5, 1.0)},
                    {"jitter": (0.2, 0.2, 0.2, 0.05)}):
        assert gap(dataclasses.replace(cfg, **changed)) > 0.12, changed


# --- raw batches: loader and trainer --------------------------------------------------------------

def test_jpeg_payload_and_decode_refill(photos, caplog):
    assert ga.jpeg_payload(photos[0]) == photos[0]
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    for bad in (photos[0][: len(photos[0]) // 2], png.getvalue()):
        with pytest.raises(ValueError, match="augment.device=cpu"):
            ga.jpeg_payload(bad)
    broken = photos[1][:200] + b"\xff\xd9"  # framed like a JPEG, undecodable
    batch = raw_batch([photos[0], broken, photos[2]])
    with caplog.at_level(logging.WARNING, logger="mlcdist.data"):
        out = ga.device_views(batch, AugmentConfig(image_size=8), "cpu", seed=0)
    assert out["views"][0].shape == (3, 3, 8, 8)
    assert out["index"].tolist() == [0, 0, 2] and torch.equal(out["labels"][1], torch.eye(3)[0])
    assert "could not be decoded" in caplog.text


def test_loader_raw_batches_and_trainer_switch(tmp_path, caplog):
    from mlcdist.train import Trainer

    truth = write_split(tmp_path / "img", [9, 7], num_classes=4, corrupt=[3])
    aug = AugmentConfig(image_size=16, device="gpu")
    loader = make_loader(str(tmp_path / "img"), DataConfig(batch_size=4, num_workers=0, shuffle_buffer=4),
                         aug, mode="pretrain", rank=0, world_size=1)
    batches = list(loader)
    assert len(batches) == 4 and loader.skipped == 1 and all("views" not in b for b in batches)
    for b in batches:
        blobs = ga.unpack_jpegs(b["jpeg"], b["jpeg_sizes"])
        assert len(blobs) == 4 and 3 not in b["index"].tolist()
        assert [bytes(x.numpy()) for x in blobs] == [truth[int(i)][1] for i in b["index"]]
    recipe = {"data": {"train": str(tmp_path / "img"), "batch_size": 4, "num_workers": 0,
                       "shuffle_buffer": 4},
              "augment": {"image_size": 16, "device": "gpu"},
              "model": {"arch": "resnet18", "head_dims": [16, 8]}, "queue": {"size": 8},
              "schedule": {"epochs": 1}, "logging": {"run_dir": str(tmp_path / "run"), "progress": False}}
    trainer = Trainer(from_dict(recipe))
    with caplog.at_level(logging.WARNING, logger="mlcdist.data"):
        values = [trainer.train_step(b) for b in batches[:2]]
    assert trainer.step == 2 and all(torch.isfinite(v) for v in values)
    assert int(trainer.queue.valid.sum()) == 8
