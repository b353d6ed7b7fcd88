"""One optimizer step on yeast's query encoder: torch's fused Adam against mlcdist's lean step.

    OMP_NUM_THREADS=1 python bench/optimizer_step.py

Both optimizers hold the same parameters (``recipes/yeast.yaml``'s MLP 103-256-512-256 and head,
11 tensors in two weight-decay groups) and gradients; each round times ``--steps`` calls of
``step()`` on each, alternating, and the table keeps every round's median per call. The last line
is ``lean vs torch fused Adam: X.XXx steps/s``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlcdist.config import load_recipe  # noqa: E402
from mlcdist.models import build_model  # noqa: E402
from mlcdist.optim import _decay_groups, adam  # noqa: E402


def per_call_us(optimizer: torch.optim.Optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per round and optimizer")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    cfg = load_recipe(ROOT / "recipes" / "yeast.yaml", ["data.train=unused"])
    optimizers = {}
    for name in ("torch fused Adam", "lean fused Adam"):
        torch.manual_seed(0)
        query = build_model(cfg.model, num_classes=14, in_dim=103).query
        for p in query.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        groups = _decay_groups(query, cfg.optim.weight_decay)
        kwargs = dict(lr=cfg.optim.lr, betas=cfg.optim.betas, fused=True)
        optimizers[name] = (torch.optim.Adam(groups, **kwargs) if name.startswith("torch")
                            else adam(groups, **kwargs))
        optimizers[name].step()  # creates the state
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(args.rounds):
        for name, optimizer in optimizers.items():
            times[name].append(per_call_us(optimizer, args.steps))
    tensors = sum(len(g["params"]) for g in optimizers["torch fused Adam"].param_groups)
    print(f"yeast query encoder: {tensors} tensors, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'optimizer':<18} {'us/step':>8}")
    for name, values in times.items():
        print(f"{name:<18} {statistics.median(values):8.0f}")
    ratio = statistics.median(times["torch fused Adam"]) / statistics.median(times["lean fused Adam"])
    print(f"lean vs torch fused Adam: {ratio:.2f}x steps/s")


if __name__ == "__main__":
    main()
