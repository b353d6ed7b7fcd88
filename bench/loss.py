"""Dense MulSupCon vs. the per-label replication of the official code, forward + backward.

    python bench/loss.py [--batch 256] [--dim 128] [--repeats 3] [--device cpu|cuda]
    python bench/loss.py --study [--big]   # the study's in-batch losses (bench/study_losses.py)
    python bench/loss.py --trainer [--naive-gib 4]   # the trainer's study losses, in-batch and MoCo
                                                     # (bench/study_trainer.py)

The baseline replicates each anchor's score row once per label it carries and runs SupCon over
the replicated rows, as the official MulSupCon code does (codes/utils.py, codes/losses.py). Both are timed in the same run;
the table shows time, peak memory (CUDA) or the size of the largest intermediate (CPU) and
the speed-up. The two losses are checked to agree before timing.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from mlcdist.losses import multilabel_supcon


def replicated_mulsupcon(q, k, yq, yk, temperature):
    """Official-code style: each anchor's score row copied once per (anchor, label) pair, the
    positive mask built as one-hot(label) @ key_labels.T, SupCon over the R replicated rows."""
    scores = q.float() @ k.float().T
    anchor, label = torch.where(yq)  # one row per (i, j)
    rows = scores[anchor]  # R x N
    one_hot = torch.zeros(len(rows), yq.shape[1], device=q.device)
    one_hot[torch.arange(len(rows), device=q.device), label] = 1
    mask = (one_hot @ yk.float().T).bool().float()  # R x N
    loss = -(torch.log(torch.softmax(rows / temperature, dim=1)) * mask).sum(1) / mask.sum(1)
    return loss.mean()


def labels(n, c, cardinality, device, g):
    probs = torch.full((n, c), cardinality / c, device=device)
    return torch.bernoulli(probs, generator=g).bool()


def time_fn(fn, repeats, device):
    def once():
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    once()  # warm-up
    return min(once() for _ in range(repeats))


def run(batch, dim, n_keys, n_classes, cardinality, repeats, device):
    g = torch.Generator(device=device).manual_seed(0)
    q = F.normalize(torch.randn(batch, dim, device=device, generator=g), dim=1).requires_grad_()
    k = F.normalize(torch.randn(n_keys, dim, device=device, generator=g), dim=1)
    yq = labels(batch, n_classes, cardinality, device, g)
    yk = torch.cat([yq, labels(n_keys - batch, n_classes, cardinality, device, g)])
    k[:batch] = q.detach()  # the anchors' own keys are candidates: every label has a positive

    dense = lambda: multilabel_supcon(q, k, yq, yk, 0.1).backward()  # noqa: E731
    base = lambda: replicated_mulsupcon(q, k, yq, yk, 0.1).backward()  # noqa: E731
    a = multilabel_supcon(q, k, yq, yk, 0.1)
    b = replicated_mulsupcon(q, k, yq, yk, 0.1)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    results = {}
    for name, fn in (("dense", dense), ("replicated", base)):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = time_fn(fn, repeats, device)
        if device == "cuda":
            mem = torch.cuda.max_memory_allocated() / 2**20
        else:  # largest intermediate: B x N (dense) or R x N (replicated) float32
            rows = batch if name == "dense" else int(yq.sum())
            mem = rows * n_keys * 4 / 2**20
        results[name] = (seconds, mem)
    return results, int(yq.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--study", action="store_true", help="the study's in-batch losses, B x B x C baselines")
    parser.add_argument("--big", action="store_true", help="with --study: also reg at C=983 (~17 GiB)")
    parser.add_argument("--trainer", action="store_true",
                        help="the trainer's study losses, in-batch and MoCo (8,192 / 65,536 candidates)")
    parser.add_argument("--naive-gib", type=float, default=4.0,
                        help="with --trainer: a straightforward form whose label tensors exceed this "
                             "runs in blocks of anchors that fit")
    parser.add_argument("--naive-seconds", type=float, default=300.0,
                        help="with --trainer: a blocked form predicted (from its first block) to take "
                             "longer is not run to the end; the table shows the prediction")
    args = parser.parse_args()
    if args.study:
        return study_table(args)
    if args.trainer:
        return trainer_table(args)

    mem = "peak MiB" if args.device == "cuda" else "max tensor MiB"
    table = Table(title=f"MulSupCon loss fwd+bwd, B={args.batch}, D={args.dim}, device={args.device}")
    for col in ("C", "N", "pairs", "dense ms", "official ms", f"dense {mem}",
                f"official {mem}", "speed-up"):
        table.add_column(col, justify="right")
    # label cardinalities of COCO (80 classes, 2.9) and Objects365 (365 classes, 6.5)
    for n_classes, card in ((80, 2.9), (365, 6.5)):
        for n_keys in (8192, 65536):
            res, pairs = run(args.batch, args.dim, n_keys, n_classes, card, args.repeats, args.device)
            (td, md), (tb, mb) = res["dense"], res["replicated"]
            table.add_row(str(n_classes), str(n_keys), str(pairs), f"{td * 1e3:.1f}",
                          f"{tb * 1e3:.1f}", f"{md:.0f}", f"{mb:.0f}", f"{tb / td:.1f}x")
    Console().print(table)


def study_table(args) -> None:
    from study_losses import study_rows  # bench/ is on sys.path when run as a script

    mem = "peak MiB" if args.device == "cuda" else "peak RSS MiB"
    table = Table(title=f"Study losses fwd+bwd in-batch, B={args.batch}, D={args.dim}, device={args.device}")
    for col in ("loss", "C", "dense ms", "B x B x C ms", f"dense {mem}", f"B x B x C {mem}", "speed-up"):
        table.add_column(col, justify="right")
    for key, c, td, ts, md, ms in study_rows(args.batch, args.dim, args.repeats, args.device, time_fn,
                                              args.big):
        table.add_row(key, str(c), f"{td * 1e3:.1f}", "-" if ts is None else f"{ts * 1e3:.1f}", f"{md:.0f}",
                      "-" if ms is None else f"{ms:.0f}", "-" if ts is None else f"{ts / td:.1f}x")
    Console().print(table)


def trainer_table(args) -> None:
    from study_trainer import trainer_rows  # bench/ is on sys.path when run as a script

    mem = "peak MiB" if args.device == "cuda" else "peak RSS MiB"
    table = Table(title=f"Study losses as the trainer runs them, fwd+bwd, B={args.batch}, D={args.dim}, "
                        f"device={args.device}, threads={torch.get_num_threads()}")
    for col in ("loss", "C", "setting", "N", "dense ms", "label-tensor ms", f"dense {mem}",
                f"label-tensor {mem}", "speed-up"):
        table.add_column(col, justify="right")
    table.add_column("label-tensor run")
    rows = trainer_rows(args.batch, args.dim, args.repeats, args.device, time_fn, args.naive_gib,
                        args.naive_seconds)
    for kind, c, setting, n, td, ts, md, ms, how in rows:
        approx = "~" if how.startswith("~") else ""
        table.add_row(kind, str(c), setting, f"{n:,}", f"{td * 1e3:.1f}", f"{approx}{ts * 1e3:.1f}",
                      f"{md:.0f}", f"{ms:.0f}", f"{approx}{ts / td:.1f}x", how)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
