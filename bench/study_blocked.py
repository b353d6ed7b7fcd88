"""The study's label-tensor forms in blocks of anchors: the same arithmetic in bounded memory.

    OMP_NUM_THREADS=1 python bench/loss.py --trainer --blocked [--naive-gib 4] [--naive-seconds 120]

Where the study's code (``bench/study_trainer.py``'s straightforward forms) would need more than
``--naive-gib`` for its B x N x C (jaccard, msc) or (B+C) x (N+C) x C (reg) label tensors, this is
the baseline: the very same per-pair label tensors, built for ``block`` anchor rows at a time. Every
anchor row's loss and weights depend only on its own row of scores and labels, so the loss is the
sum of the blocks' sums over the sum of their anchor counts; each block runs forward + backward by
itself (``torch.autograd.grad``) and the gradients are summed, then scaled by the count. So it does
every multiply-add the study's code does, nothing more, and its peak memory is that of one block.

A case whose first block, timed forward + backward, predicts more than ``--naive-seconds`` for the
whole loss is not run to the end: the table shows that prediction, marked ``~``, from the one block.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


EPS = 1e-8  # the study's code's
Block = Callable[[int, int], tuple[Tensor, Tensor]]  # rows [r0, r1) -> (sum of losses, anchor count)


def masked_log_prob(s: Tensor, keep: Tensor) -> Tensor:
    logits = s - s.masked_fill(~keep, float("-inf")).max(1, keepdim=True).values.detach()
    log_prob = logits - torch.log((torch.exp(logits) * keep).sum(1, keepdim=True))
    return torch.where(keep, log_prob, torch.zeros_like(log_prob))


def _keep(rows: Tensor, n_cols: int, self_col: Tensor) -> Tensor:
    """Block x M mask without each anchor row's own column (``self_col`` -1: none)."""
    keep = torch.ones(len(rows), n_cols, dtype=torch.bool, device=self_col.device)
    own = self_col[rows]
    has = own >= 0
    keep[torch.nonzero(has).squeeze(1), own[has]] = False
    return keep


def jaccard_block(x, y, keys, key_labels, tau, self_col) -> Block:
    """The study's ``base`` rows [r0, r1): ``compute_or``'s block x N x C union."""
    def block(r0, r1):
        z = F.normalize(x, dim=1)
        kk = z if keys is None else F.normalize(keys, dim=1)
        yk = y if keys is None else key_labels
        rows = torch.arange(r0, r1, device=x.device)
        keep = _keep(rows, len(kk), self_col)
        log_prob = masked_log_prob(z[r0:r1] @ kk.T / tau, keep)
        union = (y[r0:r1, None, :] + yk[None, :, :]).clamp(max=1).sum(-1)  # block x N x C
        jac = (y[r0:r1] @ yk.T) / (union + EPS) * keep
        w = jac / (jac.sum(1, keepdim=True) + EPS)
        return -(w * log_prob).sum(), (jac.sum(1) > 0).sum()
    return block


def msc_block(x, y, p, keys, key_labels, tau, self_col, alpha=1.0, beta=0.1) -> Block:
    """ABALONE's L_MSC rows [r0, r1): ``einsum('ac,bc->abc')``'s block x N x C pair tensor."""
    def block(r0, r1):
        z, pp = F.normalize(x, dim=1), F.normalize(p, dim=1)
        kk = z if keys is None else F.normalize(keys, dim=1)
        yk = y if keys is None else key_labels
        rows = torch.arange(r0, r1, device=x.device)
        keep = _keep(rows, len(kk), self_col).float()
        ya = y[r0:r1]
        inst, proto = z[r0:r1] @ kk.T / tau, z[r0:r1] @ pp.T / tau
        log_d = torch.log(beta * (torch.exp(inst) * keep).sum(1) + torch.exp(proto).sum(1)).unsqueeze(1)
        n = ya.sum(1)
        union = (ya[:, None, :] + yk[None, :, :]).clamp(max=1).sum(-1)
        pair = torch.einsum("ac,bc->abc", ya, yk) / union[..., None] * keep[..., None]  # block x N x C
        # the study's norm counts the self pair alpha * y / n and adds (1 - alpha / n) * y: net y
        norm = alpha * pair.sum(1) + ya
        w = (alpha * pair / (norm[:, None, :] + EPS)).sum(-1) * keep
        v = ya / (norm + EPS)
        per_anchor = -((w * (inst - log_d)).sum(1) + (v * (proto - log_d)).sum(1)) / n
        return per_anchor.sum(), torch.tensor(len(ya))
    return block


def reg_block(x, y, p, keys, key_labels, tau, alpha=0.0, regularise=True) -> Block:
    """The study's ``mscrg`` anchor nodes [r0, r1) of [queries; prototypes]: block x (N+C) x C labels."""
    b, c = len(x), p.shape[0]
    n = b if keys is None else len(keys)
    eye = torch.eye(c, device=x.device)
    ya, yb = torch.cat([y, eye]), torch.cat([y if keys is None else key_labels, eye])
    # an anchor node's own candidate column: itself in-batch; only a prototype's in MoCo
    self_col = torch.cat([torch.arange(b, device=x.device) if keys is None
                          else torch.full((b,), -1, device=x.device), n + torch.arange(c, device=x.device)])

    def block(r0, r1):
        pp = F.normalize(p, dim=1)
        ua = torch.cat([F.normalize(x, dim=1), pp])
        ub = ua if keys is None else torch.cat([F.normalize(keys, dim=1), pp])
        rows = torch.arange(r0, r1, device=x.device)
        keep = _keep(rows, len(ub), self_col)
        s = ua[r0:r1] @ ub.T / tau
        log_prob = masked_log_prob(s, keep)
        both = torch.einsum("ac,bc->abc", ya[r0:r1], yb)  # block x (N+C) x C
        f = (both.sum(-1) / yb.sum(1)[None, :]).pow(alpha) * keep
        norm = (f[..., None] * both).sum(1)
        w = (f[..., None] * both / (norm[:, None, :] + EPS)).sum(-1) / ya[r0:r1].sum(1)[:, None]
        total = (w * log_prob).sum()
        if regularise:
            share = (torch.exp(log_prob) * keep).detach()
            total = total + ((share - w).clamp_min(0) * (w != 0) * s).sum()
        return -total, (w.sum(1) != 0).sum()
    return block


def block_rows(per_row_bytes: int, gib: float) -> int:
    """Anchor rows per block so that the block's label tensors stay under ``gib``."""
    return max(1, int(gib * 2**30 // max(per_row_bytes, 1)))


def run_blocked(block: Block, rows: int, size: int, params: tuple[Tensor, ...],
                max_seconds: Optional[float] = None) -> tuple[Optional[Tensor], float, bool]:
    """Loss value, seconds and whether it ran whole: blocks of ``size`` rows, forward + backward each.

    Sets ``p.grad`` of every param to the full loss's gradient. With ``max_seconds``, stops after
    the first block when it predicts more than that; the seconds are then that prediction."""
    starts = list(range(0, rows, size))
    total, count = 0.0, 0
    grads = [torch.zeros_like(q) for q in params]
    t0 = time.perf_counter()
    for i, r0 in enumerate(starts):
        part, n = block(r0, min(r0 + size, rows))
        for acc, g in zip(grads, torch.autograd.grad(part, params, allow_unused=True)):
            if g is not None:
                acc += g
        total, count = total + part.detach(), count + int(n)
        if i == 0 and max_seconds is not None:
            predicted = (time.perf_counter() - t0) * math.ceil(rows / size)
            if predicted > max_seconds:
                return None, predicted, False
    seconds = time.perf_counter() - t0
    for q, g in zip(params, grads):
        q.grad = g / max(count, 1)
    return total / max(count, 1), seconds, True


def checked_blocked(block: Block, rows: int, size: int, params: tuple[Tensor, ...], dense: Callable[[], Tensor],
                    peak: Callable[[Callable[[], None]], float],
                    max_seconds: Optional[float] = None) -> tuple[float, float, bool]:
    """``run_blocked``, then, when it ran whole, the same value and gradients as ``dense()`` (the
    dense loss of the same inputs), and ``peak`` (a memory probe) of one block's forward and
    backward. Returns (seconds, peak MiB, ran whole); every param's ``grad`` is left None."""
    value, seconds, whole = run_blocked(block, rows, size, params, max_seconds)
    if whole:
        got = [q.grad.clone() for q in params]
        for q in params:
            q.grad = None
        want = dense()
        want.backward()
        torch.testing.assert_close(value, want.detach(), rtol=1e-4, atol=1e-4)
        for g, q in zip(got, params):
            torch.testing.assert_close(g, q.grad, rtol=1e-3, atol=1e-6)
    for q in params:
        q.grad = None

    def one_block() -> None:
        part, _ = block(0, min(size, rows))
        torch.autograd.grad(part, params, allow_unused=True)
    return seconds, peak(one_block), whole
