"""The trainer's forms of the study's losses (mlcdist.losses.study_terms) vs straightforward label tensors.

    OMP_NUM_THREADS=1 python bench/loss.py --trainer [--batch 256] [--dim 256] [--repeats 2] [--naive-gib 4] \
        [--naive-seconds 300]

Settings: in-batch (the global batch is the candidate set, self excluded: N = B) and MoCo (the batch's
keys plus a full queue: N = 8,192 and 65,536 candidates, own key included), at C = 54 and 983 labels.
The straightforward forms are the study's code generalised to N candidates: ``compute_or``'s B x N x C
union, ``einsum('ac,bc->abc')`` (msc) and, for reg, the (B+C) x (N+C) x C label tensor of the nodes
(the study's (B+C)^2 x C in-batch). In-batch they are exactly bench/study_losses.py's study-code forms.
Both are timed forward + backward in the same run (min of repeats, after one warm-up) and checked to
agree first. Peak memory: the max-RSS growth of a forked child running one step (CPU, measured), or
the CUDA peak. A straightforward form whose label tensors alone (``ALIVE`` of them at the peak,
float32) would exceed ``--naive-gib`` runs as the same arithmetic in blocks of anchor rows that fit
(``study_blocked.py``; its value and gradients are checked against the dense form, its peak is one
block's); one predicted from its first block to take over ``--naive-seconds`` shows that prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlcdist.losses.study_terms import study_terms
from study_blocked import block_rows, checked_blocked, jaccard_block, masked_log_prob, msc_block, reg_block
from study_losses import BASELINES, EPS, _peak_mib

KINDS = ("jaccard", "msc", "reg")
ALIVE = {"jaccard": 3, "msc": 4, "reg": 3}  # label tensors of the largest shape alive at the peak


def naive_jaccard(q, yq, k, yk, tau):
    z, kk = F.normalize(q, dim=1), F.normalize(k, dim=1)
    keep = torch.ones(len(z), len(kk), dtype=torch.bool, device=z.device)
    log_prob = masked_log_prob(z @ kk.T / tau, keep)
    union = (yq[:, None, :] + yk[None, :, :]).clamp(max=1).sum(-1)  # B x N x C, as compute_or
    jac = (yq @ yk.T) / (union + EPS)
    w = jac / (jac.sum(1, keepdim=True) + EPS)
    return -(w * log_prob).sum() / ((jac.sum(1) > 0).sum() + EPS)


def naive_msc(q, yq, k, yk, p, tau, alpha=1.0, beta=0.1):
    z, kk, pp = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(p, dim=1)
    inst, proto = z @ kk.T / tau, z @ pp.T / tau
    log_d = torch.log(beta * torch.exp(inst).sum(1) + torch.exp(proto).sum(1)).unsqueeze(1)
    union = (yq[:, None, :] + yk[None, :, :]).clamp(max=1).sum(-1)
    pair = torch.einsum("ac,bc->abc", yq, yk) / union[..., None]  # B x N x C
    norm = alpha * pair.sum(1) + yq  # own key included: no self term to cancel
    w = (alpha * pair / (norm[:, None, :] + EPS)).sum(-1)
    v = yq / (norm + EPS)
    return (-((w * (inst - log_d)).sum(1) + (v * (proto - log_d)).sum(1)) / yq.sum(1)).mean()


def naive_reg(q, yq, k, yk, p, tau, alpha=0.0, regularise=True):
    """Anchors [z; p], candidates [keys; p], the (B+C) x (N+C) x C label tensor of every pair."""
    c = p.shape[0]
    pp = F.normalize(p, dim=1)
    ua, ub = torch.cat([F.normalize(q, dim=1), pp]), torch.cat([F.normalize(k, dim=1), pp])
    eye = torch.eye(c, device=q.device)
    ya, yb = torch.cat([yq, eye]), torch.cat([yk, eye])
    keep = torch.ones(len(ua), len(ub), dtype=torch.bool, device=q.device)
    keep[len(q):, len(k):] = ~torch.eye(c, dtype=torch.bool, device=q.device)  # a prototype is not its own candidate
    s = ua @ ub.T / tau
    log_prob = masked_log_prob(s, keep)
    both = torch.einsum("ac,bc->abc", ya, yb)  # (B+C) x (N+C) x C
    f = (both.sum(-1) / yb.sum(1)[None, :]).pow(alpha) * keep
    norm = (f[..., None] * both).sum(1)
    w = (f[..., None] * both / (norm[:, None, :] + EPS)).sum(-1) / ya.sum(1)[:, None]
    total = (w * log_prob).sum()
    if regularise:
        share = (torch.exp(log_prob) * keep).detach()
        total = total + ((share - w).clamp_min(0) * (w != 0) * s).sum()
    return -total / (w.sum(1) != 0).sum()


def _naive_bytes(kind, b, n, c, in_batch):
    rows, cols = (b + c, n + c) if kind == "reg" else (b, n)
    return ALIVE[kind] * rows * cols * c * 4


def _case(batch, n, c, card, dim, device):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, dim, device=device, generator=g).requires_grad_()
    p = torch.randn(c, dim, device=device, generator=g).requires_grad_()

    def labels(rows):
        y = torch.bernoulli(torch.full((rows, c), card / c, device=device), generator=g)
        y[torch.arange(rows, device=device), torch.randint(c, (rows,), device=device, generator=g)] = 1
        return y

    y = labels(batch)
    if n == batch:
        return x, y, p, None, None
    keys = torch.cat([x.detach() + 0.1 * torch.randn(batch, dim, device=device, generator=g),
                      torch.randn(n - batch, dim, device=device, generator=g)])
    return x, y, p, keys, torch.cat([y, labels(n - batch)])


def _fns(kind, x, y, p, keys, key_labels, tau=0.1):
    """(dense loss, straightforward loss) closures for one setting."""
    def dense():
        if keys is None:
            t = study_terms(kind, x, y, x, y, p, temperature=tau, self_index=torch.arange(len(x), device=x.device))
        else:
            t = study_terms(kind, x, y, keys, key_labels, p, temperature=tau)
        return (t.numerator + t.shared_numerator) / (t.normaliser + t.shared_normaliser).clamp_min(1)

    def naive():
        if keys is None:
            return BASELINES[kind](*((x, y, p) if kind != "jaccard" else (x, y)), temperature=tau)
        if kind == "jaccard":
            return naive_jaccard(x, y, keys, key_labels, tau)
        return (naive_msc if kind == "msc" else naive_reg)(x, y, keys, key_labels, p, tau)
    return dense, naive


def _blocked(kind, x, y, p, keys, key_labels, tau=0.1):
    """The label-tensor form as row blocks (``study_blocked``), its anchor row count and per-row bytes."""
    n, c = (len(x) if keys is None else len(keys)), p.shape[0]
    self_col = torch.arange(len(x), device=x.device) if keys is None else torch.full((len(x),), -1,
                                                                                       device=x.device)
    if kind == "jaccard":
        return jaccard_block(x, y, keys, key_labels, tau, self_col), len(x), ALIVE[kind] * n * c * 4
    if kind == "msc":
        return msc_block(x, y, p, keys, key_labels, tau, self_col), len(x), ALIVE[kind] * n * c * 4
    return reg_block(x, y, p, keys, key_labels, tau), len(x) + c, ALIVE[kind] * (n + c) * c * 4


def _blocked_baseline(kind, case, dense, device, naive_gib, naive_seconds):
    """(seconds, peak MiB, how) of the label-tensor form run in anchor blocks under ``naive_gib``."""
    x, y, p, keys, key_labels = case
    block, rows, per_row = _blocked(kind, *case)
    size = block_rows(per_row, naive_gib)
    params = (x, p) if kind != "jaccard" else (x,)
    seconds, peak, whole = checked_blocked(block, rows, size, params, dense,
                                           lambda step: _peak_mib(step, device), naive_seconds)
    x.grad = p.grad = None
    blocks = -(-rows // size)
    how = f"{blocks} blocks of {size}" if whole else f"~ from 1 of {blocks} blocks of {size}"
    return seconds, peak, how


def trainer_rows(batch, dim, repeats, device, time_fn, naive_gib=4.0, naive_seconds=None):
    """Rows (kind, C, setting, N, dense ms, naive ms, dense MiB, naive MiB, how the naive form ran).

    A label-tensor form whose tensors exceed ``naive_gib`` runs in anchor blocks (``study_blocked``);
    ``naive_seconds`` caps a blocked run (a longer one is predicted from its first block)."""
    rows = []
    for c, card in ((54, 2.4), (983, 5.0)):
        for setting, n in (("in-batch", batch), ("MoCo", 8192), ("MoCo", 65536)):
            case = _case(batch, n, c, card, dim, device)
            x, y, p, keys, key_labels = case
            for kind in KINDS:
                dense, naive = _fns(kind, x, y, p, keys, key_labels)
                need = _naive_bytes(kind, batch, n, c, keys is None) / 2**30
                if need <= naive_gib:
                    torch.testing.assert_close(dense(), naive(), rtol=1e-4, atol=1e-4)
                    step = lambda: naive().backward()  # noqa: E731
                    ts, ms, how = time_fn(step, repeats, device), _peak_mib(step, device), "whole"
                else:
                    ts, ms, how = _blocked_baseline(kind, case, dense, device, naive_gib, naive_seconds)
                x.grad = p.grad = None
                step = lambda: dense().backward()  # noqa: E731
                td, md = time_fn(step, repeats, device), _peak_mib(step, device)
                rows.append((kind, c, setting, n, td, ts, md, ms, how))
                x.grad = p.grad = None
    return rows
