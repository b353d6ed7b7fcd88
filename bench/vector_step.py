"""Vector pretraining speed: mlcdist's trainer against a minimal torch loop doing the same math.

    OMP_NUM_THREADS=1 python bench/vector_step.py                    # yeast-shaped, the issue's setting
    OMP_NUM_THREADS=1 python bench/vector_step.py --samples 96 --epochs 1 --rounds 1   # a quick look

Data: synthetic yeast-shaped vectors (``--samples`` 1,500 x ``--features`` 103, ``--classes`` 14
labels, about 4.2 per sample) written as vector shards in a temporary folder. Both sides train the
model of ``recipes/yeast.yaml`` (MLP 103-256-512-256 with dropout, head 256-256, built by
``mlcdist.models.build_model`` from the same seed), batch 32, two 50%-masked views, the MoCo key
encoder (EMA, momentum 0.999) and a 256-key labelled queue, MulSupCon at temperature 0.1, fused
Adam lr 4e-4 with weight decay 1e-5 on the weight matrices.

* trainer: ``Trainer.fit`` from the recipe, reading the shards with ``make_loader`` (resident
  vectors: read once, batched by indexing), logging every 20 steps as the recipe does;
* plain loop: the same model, loss function (``multilabel_supcon``), optimizer, EMA (two foreach
  ops) and queue (a tensor ring buffer) written out in ~25 lines, on tensors already in memory;
* study tool: ``Trainer.fit`` as ``python -m tools.study`` / ``tools.reproduce`` pretrain (rows in
  memory through ``TensorPretrainLoader``, the validation carve left out, logging every
  ``LOG_EVERY`` steps, a checkpoint only at the end); the trainer row is the by-hand path
  (``mlcdist.train recipes/yeast.yaml``: shards, the same carve held out by ``data.hold_out_val``).

Throughput counts training samples per second over the timed steps (after ``--warmup`` steps),
best of ``--rounds`` alternating rounds; the loader share is the time the trainer spent waiting
for its batches (the loader's epoch set-up included) over all its timed steps. ``--stream`` also
times the streaming loader (one ``.npy`` decoded per sample) for comparison. The last line is
``trainer vs plain loop: X.XXx samples/s, loader share Y.Y%``; the one before it compares the
by-hand path with the study tool.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from mlcdist.config import load_recipe, to_dict  # noqa: E402
from mlcdist.data.encode import npy_bytes  # noqa: E402
from mlcdist.data.loaders import make_loader  # noqa: E402
from mlcdist.data.records import EncodedSample  # noqa: E402
from mlcdist.data.shards import write_dataset  # noqa: E402
from mlcdist.losses import multilabel_supcon  # noqa: E402
from mlcdist.models import build_model  # noqa: E402


def write_vectors(out: Path, samples: int, features: int, classes: int, seed: int = 0) -> tuple:
    """Yeast-like rows: standardised features, 1 + Poisson(3.2) labels drawn with skewed class
    frequencies; returns the (x, y) tensors as well."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, features)).astype(np.float32)
    freq = np.linspace(2.0, 0.2, classes) / np.linspace(2.0, 0.2, classes).sum()
    label_sets = [sorted(set(rng.choice(classes, size=min(classes, 1 + rng.poisson(3.2)), p=freq).tolist()))
                  for _ in range(samples)]
    records = (EncodedSample("npy", npy_bytes(x[i]), label_sets[i], f"row-{i}") for i in range(samples))
    write_dataset(records, out, name="yeast-shaped", class_names=[f"c{j}" for j in range(classes)],
                  modality="vector", feature_dim=features)
    y = torch.zeros(samples, classes)
    for i, labels in enumerate(label_sets):
        y[i, labels] = 1.0
    return torch.from_numpy(x), y


class TimedLoader:
    """Wraps the trainer's loader; records when each batch was asked for and when it came."""

    def __init__(self, loader):
        self.loader, self.asked, self.got = loader, [], []

    def __getattr__(self, name):  # set_epoch, to_device, skipped, info, ...
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            self.asked.append(time.perf_counter())
            try:
                batch = next(it)
            except StopIteration:
                self.asked.pop()
                return
            self.got.append(time.perf_counter())
            yield batch


def trainer_round(cfg, warmup: int, loader=None) -> tuple[float, float, float]:
    """(seconds, seconds waiting for batches, steps) of one ``Trainer.fit`` after ``warmup`` steps;
    ``loader`` defaults to the one ``mlcdist.train`` builds from the recipe (``data.hold_out_val``)."""
    from mlcdist.data.split import pretraining_hold_out
    from mlcdist.train import Trainer

    shutil.rmtree(cfg.logging.run_dir, ignore_errors=True)
    if loader is None:
        loader = make_loader(cfg.data.train, cfg.data, cfg.augment, mode="pretrain",
                             hold_out=pretraining_hold_out(to_dict(cfg)))
    loader = TimedLoader(loader)
    Trainer(cfg, loader=loader, console=Console(quiet=True)).fit()
    asked, got = np.array(loader.asked), np.array(loader.got)
    # step k runs from asking for batch k to asking for batch k+1; the last step (then the final
    # checkpoint) has no end mark and is left out
    span = asked[-1] - asked[warmup]
    return span, float((got[warmup:-1] - asked[warmup:-1]).sum()), len(asked) - 1 - warmup


def plain_round(cfg, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int) -> tuple[float, int]:
    """(seconds, steps) of the hand-written loop: same model, loss, optimizer, EMA and queue."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=y.shape[1], in_dim=x.shape[1])
    query, key = model.query, model.key
    matrices = [p for p in query.parameters() if p.ndim > 1]
    vectors = [p for p in query.parameters() if p.ndim <= 1]
    opt = torch.optim.Adam([{"params": matrices, "weight_decay": cfg.optim.weight_decay},
                            {"params": vectors, "weight_decay": 0.0}], lr=cfg.optim.lr, fused=True)
    q_params, k_params = list(query.parameters()), list(key.parameters())
    size, batch, m = cfg.queue.size, cfg.data.batch_size, cfg.model.momentum
    queue_k = torch.zeros(size, cfg.model.head_dims[-1])
    queue_y, queue_valid, ptr = torch.zeros(size, y.shape[1], dtype=torch.bool), torch.zeros(size, dtype=torch.bool), 0
    drop = round(cfg.augment.mask_ratio * x.shape[1])
    done, start = 0, 0.0
    while done < steps + warmup:
        for rows in torch.randperm(len(x)).split(batch)[: len(x) // batch]:
            if done == warmup:
                start = time.perf_counter()
            if done == steps + warmup:
                break
            xb, yb = x[rows], y[rows]
            v1, v2 = (xb * torch.ones_like(xb).scatter_(1, torch.rand_like(xb).argsort(1)[:, :drop], 0)
                      for _ in range(2))
            anchors = query(v1)
            with torch.no_grad():
                keys = key(v2)
                candidates = torch.cat([keys, queue_k])
                candidate_y = torch.cat([yb.bool(), queue_y])
                valid = torch.cat([torch.ones(batch, dtype=torch.bool), queue_valid])
            loss = multilabel_supcon(anchors, candidates, yb, candidate_y, cfg.loss.temperature, key_valid=valid)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_mul_(k_params, m)
                torch._foreach_add_(k_params, q_params, alpha=1 - m)
                slots = (ptr + torch.arange(batch)) % size
                queue_k[slots], queue_y[slots], queue_valid[slots] = keys, yb.bool(), True
                ptr = (ptr + batch) % size
            done += 1
    return time.perf_counter() - start, steps


def tool_round(cfg, x: torch.Tensor, y: torch.Tensor, warmup: int) -> tuple[float, float, float]:
    """``trainer_round`` as the study tool pretrains: its overrides, the kept rows in memory."""
    from mlcdist.data.memory import TensorPretrainLoader
    from mlcdist.data.split import carve_mask
    from tools.study.recipes import LOG_EVERY

    cfg.logging.every_steps, cfg.checkpoint.every_epochs, cfg.checkpoint.every_steps = LOG_EVERY, 0, 0
    kept = ~carve_mask(len(x), cfg.eval.val_fraction, cfg.eval.seed)
    loader = TensorPretrainLoader(x[kept], y[kept], cfg.data.batch_size, cfg.augment.mask_ratio, cfg.seed)
    return trainer_round(cfg, warmup, loader)


def loader_ms_per_batch(cfg, batches: int) -> tuple[float, float, float]:
    """(streaming loader ms/batch, resident loader's one-off read ms, resident ms/batch)."""
    def timed_pass(loader) -> float:
        start, n = time.perf_counter(), 0
        for _ in zip(range(batches), loader):
            n += 1
        return (time.perf_counter() - start) / max(n, 1) * 1e3

    streamed = timed_pass(make_loader(cfg.data.train, cfg.data, cfg.augment, mode="pretrain", resident=False))
    resident = make_loader(cfg.data.train, cfg.data, cfg.augment, mode="pretrain", resident=True)
    start = time.perf_counter()
    resident.stream.ensure_loaded()
    read_ms = (time.perf_counter() - start) * 1e3
    return streamed, read_ms, timed_pass(resident)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1500)
    p.add_argument("--features", type=int, default=103)
    p.add_argument("--classes", type=int, default=14)
    p.add_argument("--epochs", type=int, default=4, help="trainer epochs per round")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each round")
    p.add_argument("--rounds", type=int, default=3, help="alternating trainer / plain-loop rounds")
    p.add_argument("--stream", action="store_true", help="also time the streaming loader")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vector-step-"))
    try:
        x, y = write_vectors(work / "shards", args.samples, args.features, args.classes)
        cfg = load_recipe(ROOT / "recipes" / "yeast.yaml", [
            f"data.train={work / 'shards'}", f"logging.run_dir={work / 'run'}", "logging.progress=false",
            f"schedule.epochs={args.epochs}"])
        steps_per_epoch = args.samples // cfg.data.batch_size
        if steps_per_epoch * args.epochs <= args.warmup + 1:
            p.error(f"{steps_per_epoch * args.epochs} steps leave nothing to time after --warmup {args.warmup}")
        print(f"yeast-shaped: {args.samples} x {args.features}, {args.classes} labels, MLP "
              f"{args.features}-{'-'.join(map(str, cfg.model.mlp_dims))} + head {'-'.join(map(str, cfg.model.head_dims))}"
              f", batch {cfg.data.batch_size}, queue {cfg.queue.size}, {cfg.loss.kind}, fused {cfg.optim.name}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
        if args.stream:
            streamed, read_ms, held = loader_ms_per_batch(cfg, steps_per_epoch)
            print(f"loader ms/batch: streaming {streamed:.2f}; resident {held:.3f} "
                  f"(after reading the shards once: {read_ms:.0f} ms)")
        best_trainer, best_plain, best_tool, waits, spans = 0.0, 0.0, 0.0, 0.0, 0.0
        batch = cfg.data.batch_size
        for _ in range(args.rounds):
            span, wait, steps = trainer_round(copy.deepcopy(cfg), args.warmup)
            best_trainer = max(best_trainer, steps * batch / span)
            waits, spans = waits + wait, spans + span
            seconds, plain_steps = plain_round(cfg, x, y, steps, args.warmup)
            best_plain = max(best_plain, plain_steps * batch / seconds)
            tool_span, _, tool_steps = tool_round(copy.deepcopy(cfg), x, y, args.warmup)
            best_tool = max(best_tool, tool_steps * batch / tool_span)
        share = 100 * waits / spans
        print(f"plain torch loop: {best_plain:9.0f} samples/s ({1e3 * batch / best_plain:.2f} ms/step)")
        print(f"study tool:       {best_tool:9.0f} samples/s ({1e3 * batch / best_tool:.2f} ms/step)")
        print(f"mlcdist trainer:  {best_trainer:9.0f} samples/s ({1e3 * batch / best_trainer:.2f} ms/step), "
              f"by hand (shards, carve held out), best of {args.rounds} rounds of {steps} timed steps")
        print(f"by hand vs study tool: {best_trainer / best_tool:.2f}x samples/s")
        print(f"trainer vs plain loop: {best_trainer / best_plain:.2f}x samples/s, loader share {share:.1f}%")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
