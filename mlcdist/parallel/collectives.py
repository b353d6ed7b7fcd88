"""Collectives of the training step. Floor 1: imports nothing of mlcdist, so losses and eval can
use them. Keys and labels come from the momentum encoder and the data (no gradient); the study's
in-batch setting gathers the query features themselves, with gradient (:func:`all_gather_with_grad`).

``world()`` is ``(rank, size)`` of the initialised default group, else ``(0, 1)``; every
function is the identity in one process.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1

@torch.no_grad()
def all_gather_rows(x: Tensor) -> Tensor:
    """Concatenate equally sized row blocks from all ranks, in rank order."""
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)

class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the gathered rows and keeps this
    rank's block (an all_reduce: gloo has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """:func:`all_gather_rows` with gradient: rank r's rows get the sum over ranks of the
    gradients of the gathered copy (so every rank's loss terms reach every rank's features)."""
    _, size = world()
    return x if size == 1 else _GatherWithGrad.apply(x)

def all_reduce_sum(x: Tensor) -> Tensor:
    _, size = world()
    if size == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x

@torch.no_grad()
def shuffled_keys(encode: Callable[[Tensor], Tensor], views: Tensor, generator_seed: int) -> Tensor:
    """MoCo shuffle-BN: encode a random cross-rank permutation of the global key batch so the
    key encoder's batch-norm statistics come from other samples than the query's; returns the
    global keys in the original (rank-major) order."""
    rank, size = world()
    if size == 1:
        return encode(views)
    all_views = all_gather_rows(views)
    n = all_views.shape[0]
    gen = torch.Generator().manual_seed(generator_seed)
    perm = torch.randperm(n, generator=gen).to(views.device)  # same seed on every rank
    local = perm.view(size, -1)[rank]
    keys = all_gather_rows(encode(all_views[local]))
    out = torch.empty_like(keys)
    out[perm] = keys
    return out
