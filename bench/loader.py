"""Loader throughput: two-view pretrain pipeline vs decode-only, images/s per worker, same run.

    python bench/loader.py --make 1000                 # synthetic 500x375 photos -> 341x256 q90 JPEGs
    python bench/loader.py --shards shards/coco/train --workers 4 --batches 50

The baseline decodes the same JPEG bytes (PIL, as the pipeline does; torchvision.io.decode_jpeg
shown for reference) in this process, one core, no augmentation. The pipeline figure is the
steady-state rate after the first batch (worker start-up and shuffle-buffer fill excluded),
divided by the worker count. Ratio = pipeline per worker / PIL decode-only.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlcdist.config import AugmentConfig, DataConfig  # noqa: E402
from mlcdist.data.augment import decode_image, draft_side  # noqa: E402
from mlcdist.data.loaders import make_loader  # noqa: E402
from mlcdist.data.pipeline import resolve  # noqa: E402
from mlcdist.data.records import EncodedSample, read_shard  # noqa: E402
from mlcdist.data.shards import write_dataset  # noqa: E402


def photo_jpeg(rng: np.random.Generator) -> bytes:
    """A 500x375 'photo' (smooth blobs + sensor-like noise), resized to shorter side 256, q90."""
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((500, 375), Image.BICUBIC), dtype=np.int16)
    noisy = (base + rng.integers(-10, 11, base.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).resize((341, 256), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_synthetic(out: Path, count: int, per_shard: int = 250, num_classes: int = 20) -> None:
    """``count`` photos through the real shard writer; sample ``i`` has labels {i, 3i} mod C."""
    rng = np.random.default_rng(0)
    samples = (EncodedSample("jpg", photo_jpeg(rng), sorted({i % num_classes, 3 * i % num_classes}),
                             f"photo-{i}") for i in range(count))
    write_dataset(samples, out, name="bench-photos", class_names=[f"c{j}" for j in range(num_classes)],
                  modality="image", image={"shorter_side": 256, "quality": 90},
                  max_samples_per_shard=per_shard)


def decode_only(location: str, limit: int, min_side: int) -> tuple[float, float, int]:
    """(PIL img/s, torchvision.io img/s, images) decoding the first ``limit`` JPEGs, one core."""
    from torchvision.io import decode_jpeg

    _, shards = resolve(location)
    blobs: list[bytes] = []
    for url, size in zip(shards.urls, shards.sizes):
        blobs += [s["jpg"] for _, s in read_shard(url, 0, min(size, limit - len(blobs))) if isinstance(s, dict)]
        if len(blobs) >= limit:
            break
    start = time.perf_counter()
    for b in blobs:
        decode_image(b, min_side)
    pil = len(blobs) / (time.perf_counter() - start)
    start = time.perf_counter()
    for b in blobs:
        decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))
    tv = len(blobs) / (time.perf_counter() - start)
    return pil, tv, len(blobs)


def pipeline_rate(location: str, workers: int, batches: int, batch_size: int, size: int) -> tuple[float, int]:
    """Steady-state pretrain images/s of the whole loader (after its first batch)."""
    data = DataConfig(batch_size=batch_size, num_workers=workers, shuffle_buffer=256)
    loader = make_loader(location, data, AugmentConfig(image_size=size), mode="pretrain", rank=0, world_size=1)
    batches = min(batches, len(loader))
    if batches < 2:
        raise SystemExit(f"{location}: need >= 2 batches of {batch_size}; use more samples (--make)")
    start, seen = 0.0, 0
    for k, batch in enumerate(loader):
        if k == 0:
            start = time.perf_counter()
        else:
            seen += batch["index"].numel()
        if k + 1 == batches:
            break
    return seen / (time.perf_counter() - start), seen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", help="shard folder with dataset.json (image modality)")
    parser.add_argument("--make", type=int, default=0, help="first write N synthetic JPEG samples to a temp folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    if not args.shards and not args.make:
        parser.error("give --shards DIR or --make N (e.g. --make 1000)")
    tmp = tempfile.TemporaryDirectory(prefix="mlcdist-bench-") if args.make else None
    location = args.shards or tmp.name
    if args.make:
        make_synthetic(Path(location), args.make)
    min_side = draft_side(AugmentConfig(image_size=args.size), pretrain=True)
    rate, seen = pipeline_rate(location, args.workers, args.batches, args.batch_size, args.size)
    per_worker = rate / max(1, args.workers)
    pil, tv, decoded = decode_only(location, max(200, seen), min_side)

    table = Table(title=f"loader at {args.size}px, batch {args.batch_size} (decode rows: 1 core, this process)")
    for col in ("pipeline", "images", "img/s", "img/s per worker", "vs decode-only"):
        table.add_column(col, justify="right" if col != "pipeline" else "left")
    table.add_row("decode PIL (baseline)", str(decoded), f"{pil:.0f}", f"{pil:.0f}", "1.00")
    table.add_row("decode torchvision.io", str(decoded), f"{tv:.0f}", f"{tv:.0f}", f"{tv / pil:.2f}")
    table.add_row(f"pretrain 2 views x{args.workers}w", str(seen), f"{rate:.0f}", f"{per_worker:.0f}",
                  f"{per_worker / pil:.2f}")
    Console().print(table)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
