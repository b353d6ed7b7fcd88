"""End-to-end step throughput, four modes in one run, against a plain supervised step.

    python bench/step.py                                   # defaults by device (below)
    python bench/step.py --arch resnet50 --batch 128 --image-size 224 --steps 30 \\
        --queue 65536 --classes 365 --make-shards 5120     # the issue's H100 setting
    python bench/step.py --shards shards/coco/train --modes a,b,d

Modes (the same process, one after the other; ``samples/s`` counts training samples, each
MoCo sample being two views):

    a  supervised torchvision ResNet step on synthetic tensors (cross-entropy, 1000 classes)
    b  mlcdist's MoCo step (``Trainer.train_step``: query fwd+bwd, key fwd, queue, loss, EMA)
       on synthetic views already on the device
    c  the same Trainer fed from shards by the CPU path (decode + two views in loader workers)
    d  the same from shards by the GPU path (raw JPEG batches; decode + views on the device)

``data wait`` is the share of the timed window spent blocked on the loader; ``loss+queue``
times ``contrastive_loss`` (forward + backward) alone on embeddings, as a share of b's step.
CUDA runs bf16 autocast, channels_last, fused SGD (``--compile`` adds torch.compile); the
device is synchronised only at the ends of each timed window. Defaults: CUDA -> resnet50,
224 px, batch 128, queue 65536; CPU -> resnet18, 64 px, batch 16, queue 4096, few steps and a
few hundred tiny generated JPEGs, so that it finishes in well under a minute.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlcdist.config import from_dict  # noqa: E402
from mlcdist.data.info import load_dataset_info  # noqa: E402
from mlcdist.data.records import EncodedSample  # noqa: E402
from mlcdist.data.shards import write_dataset  # noqa: E402
from mlcdist.queue import LabelledKeyQueue  # noqa: E402
from mlcdist.data.batch import DecodedViews  # noqa: E402
from mlcdist.train.objective import contrastive_loss  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
MODES = {"a": "supervised, synthetic", "b": "MoCo step, synthetic", "c": "MoCo from shards, CPU aug",
         "d": "MoCo from shards, GPU aug"}


# --- data ----------------------------------------------------------------------------------------

def photo_jpeg(rng: np.random.Generator, shorter: int) -> bytes:
    """A photo-like JPEG (smooth blobs + sensor noise), shorter side ``shorter``, random aspect
    up to 16:9 either way, quality 90: the converter's output format."""
    long_side = int(shorter * rng.uniform(1.0, 16 / 9))
    w, h = (long_side, shorter) if rng.random() < 0.75 else (shorter, long_side)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16)
    noisy = (base + rng.integers(-10, 11, base.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_shards(out: Path, count: int, classes: int, shorter: int, seed: int = 0) -> None:
    """``count`` samples over up to 256 distinct JPEGs (decode cost is what matters), with
    Objects365-like label sets (mean cardinality min(6.5, C/4))."""
    rng = np.random.default_rng(seed)
    photos = [photo_jpeg(rng, shorter) for _ in range(min(count, 256))]
    card = min(6.5, classes / 4)
    def labels() -> list[int]:
        return sorted(set(rng.choice(classes, size=1 + rng.poisson(card - 1)).tolist()))

    samples = (EncodedSample("jpg", photos[i % len(photos)], labels(), f"gen-{i}") for i in range(count))
    write_dataset(samples, out, name="bench", class_names=[f"c{j}" for j in range(classes)], modality="image",
                  image={"shorter_side": shorter, "quality": 90}, max_samples_per_shard=1024)


def synthetic_labels(batch: int, classes: int, g: torch.Generator) -> torch.Tensor:
    probs = torch.full((batch, classes), min(6.5, classes / 4) / classes)
    return torch.bernoulli(probs, generator=g).to(DEVICE)


# --- timing ----------------------------------------------------------------------------------------

def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed(step, batches, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds for ``steps`` steps after ``warmup``, seconds of it blocked on ``batches``)."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    sync()
    start, wait = time.perf_counter(), 0.0
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        step(batch)
    sync()
    total = time.perf_counter() - start
    if hasattr(it, "close"):
        it.close()  # shuts the loader's workers down before the next mode
    return total, wait


def repeat(batch):
    while True:
        yield batch


def epochs(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


# --- modes -----------------------------------------------------------------------------------------

def supervised(args) -> dict:
    model = getattr(torchvision.models, args.arch)(num_classes=1000)
    model.to(DEVICE, memory_format=torch.channels_last)
    fused = {"fused": True} if CUDA else {}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, **fused)
    forward = torch.compile(model) if args.compile else model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(
        DEVICE, memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), generator=g).to(DEVICE)

    def step(batch):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=CUDA):
            loss = F.cross_entropy(forward(batch[0]), batch[1])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    total, wait = timed(step, repeat((x, y)), args.warmup, args.steps)
    return {"seconds": total, "wait": wait}


def recipe(args, shards: str, aug_device: str) -> dict:
    return {
        "data": {"train": shards, "batch_size": args.batch, "num_workers": args.workers,
                 "shuffle_buffer": 256},
        "augment": {"image_size": args.image_size, "device": aug_device},
        "model": {"arch": args.arch, "channels_last": True, "compile": args.compile},
        "queue": {"size": args.queue}, "optim": {"name": "sgd", "lr": 0.03},
        "precision": {"mixed": "bf16" if CUDA else "no"}, "schedule": {"epochs": 100},
        "logging": {"run_dir": str(args.tmp / "run"), "progress": False},
    }


class OneBatch(DecodedViews):
    """A loader of one fixed, already on-device batch (the step alone, no data pipeline)."""

    def __init__(self, batch: dict):
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        pass

    def __iter__(self):
        yield self.batch


def moco_synthetic(args, shards: str) -> dict:
    from mlcdist.train import Trainer

    info = load_dataset_info(shards)
    g = torch.Generator().manual_seed(0)
    views = tuple(torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(DEVICE)
                  for _ in range(2))
    batch = {"views": views, "labels": synthetic_labels(args.batch, info.num_classes, g)}
    trainer = Trainer(from_dict(recipe(args, shards, "cpu")), info=info, loader=OneBatch(batch))
    total, wait = timed(trainer.train_step, repeat(batch), args.warmup, args.steps)
    loss_s = loss_and_queue(args, trainer, batch["labels"])
    return {"seconds": total, "wait": wait, "loss_share": loss_s / total}


def loss_and_queue(args, trainer, labels: torch.Tensor) -> float:
    """Seconds for ``steps`` x (contrastive_loss fwd + bwd + enqueue) on fixed embeddings, with
    the trainer's queue size, embedding width, label count and autocast."""
    dim = trainer.cfg.model.head_dims[-1]
    g = torch.Generator().manual_seed(1)
    anchors = F.normalize(torch.randn(args.batch, dim, generator=g), dim=1).to(DEVICE).requires_grad_()
    keys = F.normalize(torch.randn(args.batch, dim, generator=g), dim=1).to(DEVICE)
    queue = LabelledKeyQueue(args.queue, dim, labels.shape[1], device=DEVICE)
    filler = F.normalize(torch.randn(args.queue, dim, device=DEVICE), dim=1)
    queue.enqueue_(filler, labels.repeat(args.queue // args.batch + 1, 1)[: args.queue])  # a full queue
    identity = torch.nn.Identity()

    def step(_):
        with trainer.acc.autocast():
            out = contrastive_loss(identity, identity, queue, (anchors, keys), labels, trainer.cfg.loss,
                                   shuffle_seed=0, shuffle_bn=False)
        out.loss.backward()
        queue.enqueue_(out.keys, out.key_labels)

    return timed(step, repeat(None), args.warmup, args.steps)[0]


def moco_shards(args, shards: str, aug_device: str) -> dict:
    from mlcdist.train import Trainer

    trainer = Trainer(from_dict(recipe(args, shards, aug_device)))
    total, wait = timed(trainer.train_step, epochs(trainer.loader), args.warmup, args.steps)
    return {"seconds": total, "wait": wait}


def run_mode(mode: str, args, shards: str) -> dict:
    if CUDA:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if mode == "a":
        result = supervised(args)
    elif mode == "b":
        result = moco_synthetic(args, shards)
    else:
        result = moco_shards(args, shards, "cpu" if mode == "c" else "gpu")
    result["samples_per_s"] = args.batch * args.steps / result["seconds"]
    result["data_wait"] = result.pop("wait") / result["seconds"]
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if CUDA else None
    return result


# --- command line ------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet50" if CUDA else "resnet18",
                        choices=["resnet18", "resnet50"])
    parser.add_argument("--batch", type=int, default=128 if CUDA else 16, help="per-GPU batch")
    parser.add_argument("--image-size", type=int, default=224 if CUDA else 64)
    parser.add_argument("--steps", type=int, default=30 if CUDA else 3, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=10 if CUDA else 1, help="untimed steps first")
    parser.add_argument("--queue", type=int, default=65536 if CUDA else 4096)
    parser.add_argument("--classes", type=int, default=365, help="label count of generated shards")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--shards", help="image shard folder with dataset.json")
    source.add_argument("--make-shards", type=int, default=0, metavar="N",
                        help="generate N JPEG samples first (default: (warmup + steps) x batch)")
    parser.add_argument("--shorter-side", type=int, default=0, help="generated JPEGs (default 256 on CUDA)")
    parser.add_argument("--workers", type=int, help="loader workers (default: cores - 2 on CUDA, else 1)",
                        default=max(1, min((os.cpu_count() or 2) - 2, 14)) if CUDA else 1)
    parser.add_argument("--modes", default="abcd", help="subset of abcd, e.g. ab")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes if m in MODES] or parser.error("--modes: pick from a, b, c, d")
    args.shorter_side = args.shorter_side or (256 if CUDA else int(args.image_size * 1.25))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlcdist-bench-step-") as tmp:
        args.tmp = Path(tmp)
        shards = args.shards
        if not shards:
            shards = str(args.tmp / "shards")
            count = args.make_shards or (args.warmup + args.steps) * args.batch
            make_shards(Path(shards), count, args.classes, args.shorter_side)
        results = {m: run_mode(m, args, shards) for m in args.modes}
    gpu = torch.cuda.get_device_name() if CUDA else "cpu"
    base = results.get("a", {}).get("samples_per_s")
    table = Table(title=f"bench/step.py: {args.arch} {args.image_size}px, batch {args.batch}, "
                        f"queue {args.queue}, {gpu}, torch {torch.__version__}")
    for col in ("mode", "samples/s", "vs (a)", "data wait", "loss+queue", "peak GPU GiB", "device"):
        table.add_column(col, justify="left" if col in ("mode", "device") else "right")
    for mode, r in results.items():
        table.add_row(f"({mode}) {MODES[mode]}", f"{r['samples_per_s']:.1f}",
                      f"{r['samples_per_s'] / base:.2f}" if base else "-", f"{100 * r['data_wait']:.1f}%",
                      f"{100 * r['loss_share']:.1f}%" if "loss_share" in r else "",
                      f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-", gpu)
    Console(width=150).print(table)
    print("targets: (d) >= 0.70 x (a); loss+queue < 2% of (b)'s step")
    settings = {k: str(v) for k, v in vars(args).items() if k != "tmp"}
    report = {"gpu": gpu, "torch": torch.__version__, "args": settings, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
