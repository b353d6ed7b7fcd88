"""Finite-state checks: parameters and buffers, run on logging and checkpoint steps only.

The loss guard alone misses collapse: at a huge learning rate BatchNorm's ``running_var`` can
reach ``inf`` while the loss stays finite (``ln N``), so a run would publish poisoned
checkpoints and exit 0. :func:`first_non_finite` scans every floating tensor of the given
modules (each rank its local shard: FSDP2 ``DTensor`` locals, DeepSpeed ZeRO-3 partitions) with
one multi-tensor norm and one host sync, agreed across ranks by one all-reduce, so every rank
stops at the same step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from mlcdist.parallel.state import local_shard


def named_state(modules: dict[str, nn.Module]) -> Iterator[tuple[str, torch.Tensor]]:
    """``("query.layer.weight", tensor)`` for every floating parameter and buffer, in a fixed order."""
    for prefix, module in modules.items():
        for kind in (module.named_parameters, module.named_buffers):
            for name, t in kind():
                if t is not None and t.is_floating_point():
                    yield f"{prefix}.{name}", t


def first_non_finite(modules: dict[str, nn.Module]) -> Optional[str]:
    """Name of the first tensor with a NaN/inf entry on any rank, else None (same on all ranks).

    Cost: one multi-tensor norm over all tensors (``torch._foreach_norm``: a NaN/inf entry makes
    its tensor's norm non-finite), one all-reduce, one host sync. ~9x cheaper than a
    ``isfinite().all()`` per tensor on the yeast MLP, where the check is 10% of a logging step.
    A norm can also overflow on finite entries (fp16, or |x| ~ 1e19 in fp32): only those tensors
    get the exact per-entry test, agreed by a second all-reduce.
    """
    named = list(named_state(modules))
    if not named:
        return None
    tensors = [local_shard(t).detach() for _, t in named]
    device = tensors[0].device
    norms = torch.stack([n.to(device) for n in torch._foreach_norm(tensors)])
    suspects = _agreed(~torch.isfinite(norms)).nonzero().flatten().tolist()  # the one host sync
    if not suspects:
        return None
    exact = torch.zeros(len(named), dtype=torch.bool, device=device)
    for k in suspects:
        exact[k] = ~torch.isfinite(tensors[k]).all().to(device)
    hits = _agreed(exact).nonzero().flatten().tolist()
    return named[hits[0]][0] if hits else None


def _agreed(flags: torch.Tensor) -> torch.Tensor:
    """``flags`` OR-ed over all ranks (unchanged without a process group)."""
    bad = flags.to(torch.int32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.bool()


def checkpoint_hint(ckpt_root: Path, latest: str = "latest") -> str:
    """Where to go back to: the checkpoint ``latest`` names, or that there is none yet."""
    pointer = ckpt_root / latest
    if pointer.exists():
        return (f"the last good checkpoint {ckpt_root / pointer.read_text().strip()} is intact; "
                "fix the recipe, then resume")
    return f"no checkpoint was written yet (in {ckpt_root}); fix the recipe and start again"
