"""The study's in-batch losses: dense (mlcdist.losses.STUDY_LOSSES) vs. straightforward B x B x C forms.

    python bench/loss.py --study [--batch 256] [--dim 256] [--repeats 3]

The straightforward forms build the B x B x C (reg: (B+C)^2 x C) label tensors as the study's code does
(`compute_or`, `einsum('ac,bc->abc')`). Both are timed forward + backward in the same run (min of
repeats); peak memory is the growth of the max RSS (CPU) of a forked child running one step, or the
CUDA peak. The two are checked to agree before timing. reg at C=983 needs ~17 GiB in the study's form:
it runs as the same arithmetic in blocks of anchor rows of at most 4 GiB of label tensors
(``study_blocked.py``; value and gradients checked against the dense form), or whole with --big.
"""

from __future__ import annotations

import os
import resource

import torch
import torch.nn.functional as F

from mlcdist.losses import STUDY_LOSSES
from study_blocked import block_rows, checked_blocked, reg_block

EPS = 1e-8


def _log_prob_no_self(s):
    off = 1.0 - torch.eye(len(s), device=s.device)
    logits = s - s.max(1, keepdim=True).values.detach()
    return logits - torch.log((torch.exp(logits) * off).sum(1, keepdim=True)), off


def study_jaccard(x, y, temperature=0.1):
    z = F.normalize(x, dim=1)
    log_prob, off = _log_prob_no_self(z @ z.T / temperature)
    union = (y[:, None, :] + y[None, :, :]).clamp(max=1).sum(-1)  # B x B x C, as compute_or
    jac = (y @ y.T) / (union + EPS) * off
    w = jac / (jac.sum(1, keepdim=True) + EPS)
    return -(w * log_prob).sum() / ((jac.sum(1) > 0).sum() + EPS)


def study_mulsupcon(x, y, temperature=0.1):
    z = F.normalize(x, dim=1)
    b = len(z)
    keep = ~torch.eye(b, dtype=torch.bool, device=z.device)
    log_prob = torch.log(torch.softmax((z @ z.T / temperature)[keep].view(b, b - 1), dim=1))
    others = torch.arange(b, device=z.device).expand(b, b)[keep].view(b, b - 1)
    anchor, label = torch.where(y > 0)
    mask = y[others][anchor, :, label]  # B x (B-1) x C label tensor, one row per pair
    per_pair = -(log_prob[anchor] * mask).sum(1) / (mask.sum(1) + EPS)
    return per_pair.mean()


def study_msc(x, y, prototypes, temperature=0.1, alpha=1.0, beta=0.1):
    z, p = F.normalize(x, dim=1), F.normalize(prototypes, dim=1)
    inst, proto = z @ z.T / temperature, z @ p.T / temperature
    off = 1.0 - torch.eye(len(z), device=z.device)
    log_d = torch.log(beta * (torch.exp(inst) * off).sum(1) + torch.exp(proto).sum(1)).unsqueeze(1)
    n = y.sum(1)
    union = (y[:, None, :] + y[None, :, :]).clamp(max=1).sum(-1)
    pair = torch.einsum("ac,bc->abc", y, y) / union[..., None]  # B x B x C
    norm = alpha * pair.sum(1) + (1 - alpha / n)[:, None] * y
    w = (alpha * pair / (norm[:, None, :] + EPS)).sum(-1) * off
    v = y / (norm + EPS)
    return (-((w * (inst - log_d)).sum(1) + (v * (proto - log_d)).sum(1)) / n).mean()


def study_reg(x, y, prototypes, temperature=0.1, alpha=0.0, regularise=True):
    u = torch.cat([F.normalize(x, dim=1), F.normalize(prototypes, dim=1)])
    yh = torch.cat([y, torch.eye(y.shape[1], device=y.device)])
    s = u @ u.T / temperature
    log_prob, off = _log_prob_no_self(s)
    both = torch.einsum("ac,bc->abc", yh, yh)  # N x N x C
    f = (both.sum(-1) / yh.sum(1)[None, :]).pow(alpha) * off
    norm = (f[..., None] * both).sum(1)
    w = (f[..., None] * both / (norm[:, None, :] + EPS)).sum(-1) / yh.sum(1)[:, None]
    total = (w * log_prob).sum()
    if regularise:
        share = (torch.exp(log_prob) * off).detach()
        total = total + ((share - w).clamp_min(0) * (w != 0) * s).sum()
    return -total / (w.sum(1) != 0).sum()


BASELINES = {"jaccard": study_jaccard, "mulsupcon": study_mulsupcon, "msc": study_msc,
             "reg": study_reg, "reg_plain": lambda *a, **k: study_reg(*a, regularise=False, **k)}
PROTO = ("proto", "msc", "reg", "reg_plain")


def _peak_mib(step, device):
    """Peak extra memory of one step: CUDA peak, or max-RSS growth of a forked child (CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    if torch.get_num_threads() > 1:  # a forked child of an OpenMP-threaded parent can hang for good
        raise SystemExit("error: the CPU memory probe forks; run with OMP_NUM_THREADS=1")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: its own high-water mark
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        os.write(write, str((after - before) / 1024).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    return float(os.read(read, 64).decode() or "nan")


def _blocked_reg(key, x, y, p, device, gib=4.0):
    """(seconds, peak MiB) of the study's reg form in anchor blocks; checked against the dense form."""
    rows = len(x) + p.shape[0]
    block = reg_block(x, y, p, None, None, 0.1, regularise=key == "reg")
    size = block_rows(3 * rows * p.shape[0] * 4, gib)
    seconds, peak, _ = checked_blocked(block, rows, size, (x, p), lambda: STUDY_LOSSES[key](x, y, p),
                                       lambda step: _peak_mib(step, device))
    return seconds, peak


def study_rows(batch, dim, repeats, device, time_fn, big=False):
    """Rows (key, C, dense ms, study ms, dense MiB, study MiB, ratio) for C = 54 and 983."""
    rows = []
    for n_classes, card in ((54, 2.4), (983, 5.0)):
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(batch, dim, device=device, generator=g).requires_grad_()
        p = torch.randn(n_classes, dim, device=device, generator=g).requires_grad_()
        y = torch.bernoulli(torch.full((batch, n_classes), card / n_classes, device=device), generator=g)
        y[torch.arange(batch), torch.randint(n_classes, (batch,), device=device, generator=g)] = 1
        for key in ("jaccard", "mulsupcon", "proto", "msc", "reg", "reg_plain"):
            args = (x, y, p) if key in PROTO else (x, y)
            dense = lambda: STUDY_LOSSES[key](*args).backward()  # noqa: E731
            td, md = time_fn(dense, repeats, device), _peak_mib(dense, device)
            ts = ms = None
            if key in BASELINES and (big or not (key.startswith("reg") and n_classes > 500)):
                torch.testing.assert_close(STUDY_LOSSES[key](*args), BASELINES[key](*args),
                                           rtol=1e-4, atol=1e-4)
                study = lambda: BASELINES[key](*args).backward()  # noqa: E731
                ts, ms = time_fn(study, repeats, device), _peak_mib(study, device)
            elif key.startswith("reg"):
                ts, ms = _blocked_reg(key, x, y, p, device)
            rows.append((key, n_classes, td, ts, md, ms))
    return rows
