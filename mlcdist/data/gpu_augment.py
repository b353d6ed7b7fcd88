r"""Device views: decode a batch of JPEGs and draw the two pretraining views on any device.

The same augmentation as the CPU path (``augment.py``, MoCo v2 / MulSupCon), per sample, as
batched tensor ops (no Python loop over samples except packing the decoded images, which have
different sizes, into one padded batch):

1. random resized crop: area fraction :math:`s \sim U(\text{crop\_scale})`, aspect
   :math:`r = e^{u},\ u \sim U(\log\tfrac34, \log\tfrac43)`, :math:`w = \text{round}\sqrt{sAr}`,
   :math:`h = \text{round}\sqrt{sA/r}`, first of 10 tries that fits, else torchvision's central
   fallback (exactly ``RandomResizedCrop``'s sampling); resized to ``S x S`` by one
   ``roi_align`` call (bilinear, ``ceil(crop / S)^2`` samples per output pixel, i.e. box
   antialiasing when shrinking, as PIL's resize does);
2. with p = ``jitter_p``, colour jitter in a per-sample random order: brightness, contrast and
   saturation are blends :math:`x \leftarrow \text{clamp}(f x + (1 - f) r, 0, 1)` with
   :math:`r = 0`, the image's mean gray, its gray image; :math:`f \sim U[1-a, 1+a]`; hue adds
   :math:`\delta \sim U[-a_h, a_h]` to H in HSV;
3. grayscale :math:`0.299R + 0.587G + 0.114B` (ITU-R 601, as PIL) with p = ``grayscale_p``;
4. horizontal flip with p = ``flip_p`` (it commutes with 2-3);
5. ImageNet normalisation.

All random numbers come from one ``torch.Generator`` on the device, seeded per step by the
trainer, so nothing is read back to the host and a seed fixes the views. Unlike the CPU path,
the views depend on the step (batch position), not on the sample's index.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_align

from mlcdist.config import AugmentConfig
from mlcdist.data.augment import IMAGENET_MEAN, IMAGENET_STD

with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
    warnings.simplefilter("ignore", DeprecationWarning)
    from torchvision.io import ImageReadMode, decode_jpeg

log = logging.getLogger("mlcdist.data")
RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop default, as the CPU path
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_warned_host = False


def to_device(values, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """A few host numbers on ``device`` by a non-blocking copy: a blocking host-to-device copy
    (``torch.tensor(..., device=cuda)``) waits for all queued GPU work, stalling the pipeline."""
    return torch.as_tensor(values, dtype=dtype).to(device, non_blocking=True)


# --- raw JPEG batches (built in loader workers) ----------------------------------------------

def jpeg_payload(data: bytes) -> bytes:
    """``data`` unchanged if it frames one complete JPEG (starts with SOI, ends with EOI);
    a truncated or non-JPEG payload raises ``ValueError`` (the loader skips and counts it)."""
    if not data.startswith(_SOI) or not data.rstrip(b"\x00\r\n ").endswith(_EOI):
        raise ValueError("not a complete JPEG (augment.device=gpu decodes JPEG only); "
                         "re-convert the shards or use augment.device=cpu")
    return data


def pack_jpegs(blobs: Sequence[bytes]) -> tuple[Tensor, Tensor]:
    """``(bytes, sizes)``: all payloads concatenated (1-D uint8, one pin and one transfer) and
    the byte count of each (int64)."""
    sizes = torch.tensor([len(b) for b in blobs], dtype=torch.int64)
    return torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8), sizes


def unpack_jpegs(data: Tensor, sizes: Tensor) -> list[Tensor]:
    """Inverse of :func:`pack_jpegs`: 1-D uint8 views, one per image (still on the host)."""
    return list(torch.split(data.cpu(), sizes.tolist()))


def _decode(blobs: Tensor | list[Tensor], device: torch.device | str):
    with warnings.catch_warnings():  # the deprecation warning above, repeated on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)


def decode_jpegs(blobs: list[Tensor], device: torch.device | str) -> tuple[list[Tensor], Tensor | None]:
    """RGB uint8 ``3 x H x W`` images on ``device`` (nvJPEG batch decode on CUDA) and ``None``,
    or, when some blob fails to decode, the index of the blob each position now holds: a failed
    blob is replaced by a decodable one of the batch (``good[h mod |good|]`` for hole ``h``, as
    the loader refills holes), so the caller re-indexes the labels and the batch keeps its size."""
    try:
        return list(_decode(blobs, device)), None
    except RuntimeError:  # one bad image fails the whole call: retry one by one
        pass
    images: list[Tensor | None] = []
    for k, blob in enumerate(blobs):
        try:
            images.append(_decode(blob, device))
        except RuntimeError as err:
            log.warning("sample %d of the batch could not be decoded (%s); refilled from the batch", k, err)
            images.append(None)
    good = [k for k, im in enumerate(images) if im is not None]
    if not good:
        raise RuntimeError(f"none of the {len(blobs)} JPEGs of a batch decodes; check the shards "
                           "(converter `verify`) or use augment.device=cpu")
    source = torch.arange(len(blobs))
    holes = [k for k, im in enumerate(images) if im is None]
    for h, k in enumerate(holes):
        source[k] = good[h % len(good)]
    return [images[int(s)] for s in source], source


# --- random parameters ------------------------------------------------------------------------

def _uniform(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


def sample_crop_boxes(heights: Tensor, widths: Tensor, scale: tuple[float, float],
                      generator: torch.Generator, ratio: tuple[float, float] = RATIO,
                      tries: int = 10) -> Tensor:
    """``K x 4`` float64 ``(top, left, height, width)`` per image of size ``heights x widths``,
    torchvision ``RandomResizedCrop.make_params`` with its 10 tries drawn at once: the first try
    with ``0 < w <= W`` and ``0 < h <= H`` wins, offsets ``~ U{0..H-h}``, ``U{0..W-w}``; if none
    fits, the central crop clamped to the ratio range."""
    device = generator.device
    H = to_device(heights, device, torch.float64)
    W = to_device(widths, device, torch.float64)
    u = torch.rand(H.numel(), tries, 4, generator=generator, device=device, dtype=torch.float64)
    area = (H * W)[:, None] * _uniform(u[..., 0], *scale)
    aspect = torch.exp(_uniform(u[..., 1], math.log(ratio[0]), math.log(ratio[1])))
    w = torch.round(torch.sqrt(area * aspect))  # round half to even, as Python's round()
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # first maximum = first try that fits

    def pick(t: Tensor) -> Tensor:
        return t.gather(1, first).squeeze(1)

    w, h = pick(w), pick(h)
    top = torch.floor(pick(u[..., 2]) * (H - h + 1))
    left = torch.floor(pick(u[..., 3]) * (W - w + 1))
    in_ratio = W / H
    fb_w = torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W)
    fb_h = torch.where(in_ratio < ratio[0], torch.round(W / ratio[0]), H)
    found = fits.any(1)
    h, w = torch.where(found, h, fb_h), torch.where(found, w, fb_w)
    top = torch.where(found, top, torch.floor((H - fb_h) / 2))
    left = torch.where(found, left, torch.floor((W - fb_w) / 2))
    return torch.stack([top, left, h, w], 1)


def sample_jitter(n: int, cfg: AugmentConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(factors, order)``: ``n x 4`` factors (brightness, contrast, saturation multipliers
    ``U[max(0, 1-a), 1+a]``, hue shift ``U[-a_h, a_h]``), the identity ``(1, 1, 1, 0)`` for
    samples not jittered (p = ``1 - jitter_p``); ``n x 4`` op order, a uniform permutation per row."""
    device = generator.device
    b, c, s, hue = cfg.jitter
    u = torch.rand(n, 4, generator=generator, device=device)
    lo = to_device([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -hue], device)
    hi = to_device([1 + b, 1 + c, 1 + s, hue], device)
    factors = lo + (hi - lo) * u
    apply = torch.rand(n, generator=generator, device=device) < cfg.jitter_p
    identity = to_device([1.0, 1.0, 1.0, 0.0], device)
    order = torch.rand(n, 4, generator=generator, device=device).argsort(1)
    return torch.where(apply[:, None], factors, identity), order


# --- pixel ops on K x 3 x S x S float images in [0, 1] ------------------------------------------

def resized_crops(images: Sequence[Tensor], boxes: Tensor, owner: Tensor, size: int) -> Tensor:
    """Crop ``k`` = box ``boxes[k]`` (top, left, h, w) of ``images[owner[k]]`` resized to
    ``size x size``: float32 in [0, 1], one ``roi_align`` over a padded batch of the images."""
    heights = [int(im.shape[-2]) for im in images]
    widths = [int(im.shape[-1]) for im in images]
    device = images[0].device
    batch = torch.zeros(len(images), 3, max(heights) + 1, max(widths) + 1, device=device)
    for k, im in enumerate(images):  # the one loop over samples: the images differ in size
        batch[k, :, : heights[k], : widths[k]] = im
    # Replicate each image's last row and column once: bilinear samples in a crop's last half
    # pixel then read the image's own edge (as PIL clamps), not the zero padding.
    rows, k = to_device(heights, device, torch.int64), torch.arange(len(images), device=device)
    cols = to_device(widths, device, torch.int64)
    batch[k, :, rows, :] = batch[k, :, rows - 1, :]
    batch[k, :, :, cols] = batch[k, :, :, cols - 1]
    batch.mul_(1 / 255)
    top, left, h, w = boxes.unbind(1)
    rois = torch.stack([owner.to(boxes), left, top, left + w, top + h], 1).to(device, torch.float32)
    return roi_align(batch, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def gray(x: Tensor) -> Tensor:
    """``K x 1 x H x W`` luma ``0.299 R + 0.587 G + 0.114 B``."""
    return torch.einsum("kchw,c->khw", x, to_device(GRAY_WEIGHTS, x.device, x.dtype)).unsqueeze(1)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB in [0, 1] -> HSV in [0, 1] (H = 0 where max = min), torchvision's convention."""
    r, g, b = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    delta = maxc - minc
    flat = delta == 0
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    d = torch.where(flat, torch.ones_like(delta), delta)
    h = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, (b - r) / d + 2, (r - g) / d + 4))
    h = torch.where(flat, torch.zeros_like(h), (h / 6).remainder(1.0))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    r"""HSV -> RGB: channel :math:`n \in (5, 3, 1)` is :math:`v - vs\,\text{clamp}(\min(k, 4-k), 0, 1)`,
    :math:`k = (n + 6h) \bmod 6`."""
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    k = (to_device([5.0, 3.0, 1.0], hsv.device, hsv.dtype).view(1, 3, 1, 1) + 6 * h).remainder(6)
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of image ``k`` by ``shift[k]`` turns."""
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)).remainder(1.0)
    return hsv_to_rgb(hsv)


def color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Apply op ``order[k, p]`` (0 brightness, 1 contrast, 2 saturation, 3 hue) with
    ``factors[k, op]`` at position ``p = 0..3`` to image ``k``; every position evaluates the
    blend and the hue for the whole batch and keeps what each sample's op asks (no host sync)."""
    def col(t: Tensor) -> Tensor:
        return t.view(-1, 1, 1, 1)

    for p in range(4):
        op = order[:, p]
        f = col(torch.where(op < 3, factors.gather(1, op.clamp(max=2)[:, None]).squeeze(1), 1.0))
        g = gray(x)
        ref = torch.where(col(op == 0), 0.0, torch.where(col(op == 1), g.mean((2, 3), keepdim=True), g))
        x = (f * x + (1 - f) * ref).clamp_(0, 1)
        x = torch.where(col(op == 3), shift_hue(x, factors[:, 3]), x)
    return x


def two_views(images: Sequence[Tensor], cfg: AugmentConfig,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two normalised float32 ``B x 3 x S x S`` views of ``B`` uint8 ``3 x H x W`` images (any
    sizes, on the generator's device): crop, jitter, grayscale, flip, normalise (module docstring)."""
    n = len(images)
    device = generator.device
    heights = torch.tensor([int(im.shape[-2]) for im in images]).repeat(2)
    widths = torch.tensor([int(im.shape[-1]) for im in images]).repeat(2)
    boxes = sample_crop_boxes(heights, widths, cfg.crop_scale, generator)
    x = resized_crops(images, boxes, torch.arange(n, device=device).repeat(2), cfg.image_size)
    factors, order = sample_jitter(2 * n, cfg, generator)
    x = color_jitter(x, factors, order)
    to_gray = torch.rand(2 * n, generator=generator, device=device) < cfg.grayscale_p
    x = torch.where(to_gray.view(-1, 1, 1, 1), gray(x).expand_as(x), x)
    flip = torch.rand(2 * n, generator=generator, device=device) < cfg.flip_p
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    mean = to_device(IMAGENET_MEAN, device).view(1, 3, 1, 1)
    inv_std = 1 / to_device(IMAGENET_STD, device).view(1, 3, 1, 1)
    x = x.sub_(mean).mul_(inv_std)
    return x[:n], x[n:]


def device_views(batch: dict, cfg: AugmentConfig, device: torch.device | str, seed: int) -> dict:
    """Trainer hook for ``augment.device=gpu``: a raw loader batch ``{"jpeg", "jpeg_sizes",
    "labels", "index"}`` -> ``{"views": (v1, v2), "labels", "index"}`` on ``device``, with the
    views drawn from a generator seeded with ``seed``. Off CUDA it runs the same code on the CPU
    (slow; it keeps the switch testable) and warns once."""
    global _warned_host
    device = torch.device(device)
    if device.type != "cuda" and not _warned_host:
        log.warning("augment.device=gpu without a CUDA device: decoding and augmenting on %s in the "
                    "training process (slow); use augment.device=cpu on CPU-only machines", device)
        _warned_host = True
    images, source = decode_jpegs(unpack_jpegs(batch["jpeg"], batch["jpeg_sizes"]), device)
    generator = torch.Generator(device=device).manual_seed(seed)
    labels, index = batch["labels"], batch["index"]
    if source is not None:
        labels, index = labels[source], index[source]
    return {"views": two_views(images, cfg, generator),
            "labels": labels.to(device, non_blocking=True), "index": index}
