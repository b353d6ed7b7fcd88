r"""The study's contrastive losses as the trainer runs them: this rank's anchors against a candidate set.

The in-batch functions of ``STUDY_LOSSES`` take one batch that is both anchors and candidates. The
trainer needs more: B local anchors against N candidates (the global batch's keys plus the labelled
queue in the MoCo setting, or the global batch itself, gathered across ranks, in the study's in-batch
setting), and a numerator and normaliser per rank so that W processes x batch b equal one process x
batch W*b. :func:`study_terms` gives them for ``jaccard``, ``mulsupcon`` (the study's in-batch form),
``proto``, ``msc``, ``reg`` and ``reg_plain``, with every formula of docs/losses.md read with
"the other samples" = the anchor's valid candidates:

- ``keep`` (B x N) = candidate valid and not the anchor itself. ``self_index`` names each anchor's own
  column (in-batch: excluded, as the study); ``None`` keeps every valid candidate (MoCo: the anchor's
  own key is a positive, as for MulSupCon).
- ``reg``/``reg_plain``: the nodes are the candidates and the C prototypes. The prototypes are anchors
  too, against the valid candidates and the other prototypes; those C anchors are the same on every
  rank (candidates are global, prototypes replicated), so they come back as ``shared_*``: counted
  once, not once per rank.

With one process, ``candidates = anchors`` and ``self_index = arange(B)``, each kind equals its
``STUDY_LOSSES`` function: ``(numerator + shared_numerator) / (normaliser + shared_normaliser)``.
Only B x N, B x C, C x N and C x C products appear; no B x N x C tensor.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from mlcdist.losses._study import EPS, compute_dtype, unit_rows
from mlcdist.losses.mulsupcon import _ScoreLogSumExp

STUDY_CONTRASTIVE: tuple[str, ...] = ("jaccard", "mulsupcon", "proto", "msc", "reg", "reg_plain")
NEEDS_PROTOTYPES: tuple[str, ...] = ("proto", "msc", "reg", "reg_plain")


class StudyTerms(NamedTuple):
    """``loss = (sum_ranks numerator + shared_numerator) / (sum_ranks normaliser + shared_normaliser)``;
    the ``shared_*`` parts are identical on every rank; normalisers carry no gradient."""

    numerator: Tensor
    normaliser: Tensor
    shared_numerator: Tensor
    shared_normaliser: Tensor


class _Block(NamedTuple):
    """One group of candidate columns of a set of anchors: scores, who may be a candidate, weights."""

    scores: Tensor
    keep: Optional[Tensor]  # bool, None = every column
    weights: Optional[Tensor]  # None = no positive in this block


def _weighted_nll(blocks: list[_Block], regularise: bool) -> tuple[Tensor, Tensor]:
    r"""(:math:`-\sum_a \sum_b [w_{ab} \log p_{ab} + r_{ab} S_{ab}]`, #anchors with a positive), the
    softmax of each anchor running over the kept columns of all blocks (``r`` only if ``regularise``)."""
    masked = [b.scores if b.keep is None else b.scores.masked_fill(~b.keep, float("-inf")) for b in blocks]
    lse = torch.logsumexp(torch.stack([torch.logsumexp(m, dim=1) for m in masked]), dim=0)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # no candidate: weights are 0
    total = lse.new_zeros(())
    weight_sum = lse.new_zeros(lse.shape)
    for block, m in zip(blocks, masked):
        if block.weights is None:
            continue
        total = total + (block.weights * block.scores).sum()
        weight_sum = weight_sum + block.weights.sum(1)
        if regularise:
            with torch.no_grad():  # r_ab = max(sg(sigma_ab) - w_ab, 0) [w_ab != 0]
                share = torch.exp(m - lse.unsqueeze(1))
                extra = (share - block.weights).clamp_min(0.0) * (block.weights != 0)
            total = total + (extra * block.scores).sum()
    total = total - (weight_sum * lse).sum()
    return -total, (weight_sum != 0).sum().to(total.dtype)


def _overlap_weight(overlap: Tensor, alpha: float) -> Tensor:
    """f(x) = x^alpha (alpha >= 0; 0^0 = 1) or the hard subset threshold [x >= 1 - EPS] (alpha < 0)."""
    return overlap.pow(alpha) if alpha >= 0 else (overlap >= 1.0 - EPS).to(overlap.dtype)


def _jaccard(s, keep, ya, yc) -> tuple[Tensor, Tensor]:
    inter = ya @ yc.T
    union = ya.sum(1, keepdim=True) + yc.sum(1).unsqueeze(0) - inter
    jac = inter / (union + EPS) * keep.to(s.dtype)
    weights = jac / (jac.sum(1, keepdim=True) + EPS)
    return _weighted_nll([_Block(s, keep, weights)], regularise=False)


def _mulsupcon(s, keep, ya, yc) -> tuple[Tensor, Tensor]:
    keepf = keep.to(s.dtype)
    masked = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(masked, dim=1)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    positives = keepf @ yc  # |P_ic|, B x C
    pos_log_prob = (s * keepf) @ yc - lse.unsqueeze(1) * positives
    per_pair = -pos_log_prob / (positives + EPS) * ya
    return per_pair.sum(), ya.sum()  # a pair without positives counts (the study's convention)


def _proto(z, p, ya, temperature) -> tuple[Tensor, Tensor]:
    log_pi = torch.log_softmax((z @ p.T) / temperature, dim=1)
    size = ya.sum(1)
    return (-(ya * log_pi).sum(1) / size.clamp_min(1.0)).sum(), (size > 0).sum().to(z.dtype)


def _msc(s, q, keep, ya, yc, alpha, beta) -> tuple[Tensor, Tensor]:
    inter = ya @ yc.T
    union = ya.sum(1, keepdim=True) + yc.sum(1).unsqueeze(0) - inter
    inv_union = torch.where(union > 0, keep.to(s.dtype) / union.clamp_min(1.0), torch.zeros_like(union))
    norm = ya * (1.0 + alpha * (inv_union @ yc))  # N_ic
    proto_w = ya / (norm + EPS)
    inst_w = alpha * inv_union * (proto_w @ yc.T)
    log_beta = math.log(beta) if beta > 0 else float("-inf")
    instances = torch.logsumexp(s.masked_fill(~keep, float("-inf")) + log_beta, dim=1)
    log_denom = torch.logaddexp(instances, torch.logsumexp(q, dim=1))  # log D_i
    pos = (inst_w * s).sum(1) + (proto_w * q).sum(1) - (inst_w.sum(1) + proto_w.sum(1)) * log_denom
    size = ya.sum(1)
    return (-pos / size.clamp_min(1.0)).sum(), (size > 0).sum().to(s.dtype)


def _reg_instances(s, q, keep, ya, yc, alpha, regularise) -> tuple[Tensor, Tensor]:
    """Instance anchors: candidates are the kept instances and every prototype (prototype c = {c})."""
    f_inst = _overlap_weight((ya @ yc.T) / yc.sum(1).clamp_min(1.0).unsqueeze(0), alpha) * keep.to(s.dtype)
    f_proto = _overlap_weight(ya, alpha)  # x_ic = |y_i & {c}| / 1
    per_label = ya / (ya * (f_inst @ yc + f_proto) + EPS)  # y_ic / (R_ic + eps)
    size = ya.sum(1, keepdim=True).clamp_min(1.0)
    inst_w = f_inst * (per_label @ yc.T) / size
    proto_w = f_proto * per_label / size
    return _weighted_nll([_Block(s, keep, inst_w), _Block(q, None, proto_w)], regularise)


def _carrier_weight(yc: Tensor, alpha: float) -> Tensor:
    """g_a = f(1 / |y_a|): a prototype anchor's overlap with a candidate carrying its label (N)."""
    return _overlap_weight(1.0 / yc.sum(1).clamp_min(1.0), alpha)


def _reg_prototypes(z_cand, p, yc, valid, temperature, alpha, regularise) -> tuple[Tensor, Tensor]:
    r"""Prototype anchors k: positives are the valid candidates carrying k, :math:`w_{ka} = y_{ak} g_a / R_k`
    with :math:`R_k = \sum_a y_{ak} g_a`; the other prototypes are candidates only (they share no label).

    C x N is the largest shape (C = 983 labels x 65,536 queue keys is 257 MB in float32), so only the
    score matrix of the softmax (fused, one buffer) and, for ``reg``, the regulariser's constant r
    are C x N; the positive term is :math:`p_k \cdot V_k` with the C x D carrier sums V."""
    g = _carrier_weight(yc, alpha)  # invalid rows of yc are 0: they carry nothing
    reach = yc.T @ g  # R_k, C
    carrier_sum = (yc.T @ (g.unsqueeze(1) * z_cand)) / (reach + EPS).unsqueeze(1)  # V, C x D
    lse_instances = _ScoreLogSumExp.apply(p / temperature, z_cand, valid)
    others = torch.eye(len(p), dtype=torch.bool, device=p.device)
    lse_prototypes = torch.logsumexp(((p @ p.T) / temperature).masked_fill(others, float("-inf")), dim=1)
    lse = torch.logaddexp(lse_instances, lse_prototypes) if len(p) > 1 else lse_instances
    weight_sum = reach / (reach + EPS)  # W_k
    total = (p * carrier_sum).sum() / temperature - (weight_sum * lse).sum()
    if regularise:
        total = total + _prototype_regulariser(z_cand, p, yc, g, reach, valid, lse, temperature)
    return -total, (reach > 0).sum().to(total.dtype)


def _prototype_regulariser(z_cand, p, yc, g, reach, valid, lse, temperature) -> Tensor:
    r""":math:`\sum_{k,a} r_{ka} S_{ka}` with the constant :math:`r = \max(\sigma - w, 0)[w \neq 0]`."""
    with torch.no_grad():
        share = (p @ z_cand.T).div_(temperature).sub_(lse.unsqueeze(1)).exp_().mul_(valid)  # sigma, C x N
        weights = (yc * g.unsqueeze(1)).T.div_((reach + EPS).unsqueeze(1))  # w, C x N
        extra = share.sub_(weights).clamp_min_(0.0).mul_(weights != 0)
        del weights
    if z_cand.requires_grad:  # in-batch: N is the global batch, the product is small
        return (extra * (p @ z_cand.T)).sum() / temperature
    return (p * (extra @ z_cand)).sum() / temperature


def study_terms(kind: str, anchors: Tensor, labels: Tensor, candidates: Tensor, candidate_labels: Tensor,
                prototypes: Optional[Tensor] = None, *, temperature: float = 0.1,
                valid: Optional[Tensor] = None, self_index: Optional[Tensor] = None,
                alpha: Optional[float] = None, beta: float = 0.1) -> StudyTerms:
    """Numerator and normaliser of a study loss for B anchors against N candidates (module docstring).

    Args:
        kind: one of :data:`STUDY_CONTRASTIVE`.
        anchors: B x D, labels: B x C; candidates: N x D, candidate_labels: N x C (raw or unit rows).
        prototypes: C x D raw (``proto``, ``msc``, ``reg``, ``reg_plain``).
        valid: N-bool mask of usable candidates (unfilled queue slots are False).
        self_index: B column indices excluded per anchor (in-batch), or None (MoCo: own key kept).
        alpha: ``msc`` default 1, ``reg``/``reg_plain`` default 0; beta: ``msc`` only.
    """
    if kind not in STUDY_CONTRASTIVE:
        raise ValueError(f"study_terms: kind={kind!r}; expected one of {', '.join(STUDY_CONTRASTIVE)}")
    if kind in NEEDS_PROTOTYPES and prototypes is None:
        raise ValueError(f"study_terms: {kind} needs prototypes (C x D)")
    dtype = compute_dtype(anchors)
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        z, ya = unit_rows(anchors, dtype), labels.to(dtype)
        p = None if prototypes is None else unit_rows(prototypes, dtype)
        zero = z.new_zeros(())
        if kind == "proto":
            return StudyTerms(*_proto(z, p, ya, temperature), zero, zero)
        n = candidates.shape[0]
        valid = (torch.ones(n, dtype=torch.bool, device=z.device) if valid is None
                 else valid.to(device=z.device, dtype=torch.bool))
        zc = unit_rows(candidates, dtype)
        yc = candidate_labels.to(dtype) * valid.unsqueeze(1)  # an invalid row is nobody's positive
        keep = valid.unsqueeze(0).expand(len(z), n)
        if self_index is not None:
            columns = torch.arange(n, device=z.device).unsqueeze(0)
            keep = keep & (columns != self_index.to(z.device).unsqueeze(1))
        s = (z @ zc.T) / temperature
        if kind == "jaccard":
            return StudyTerms(*_jaccard(s, keep, ya, yc), zero, zero)
        if kind == "mulsupcon":
            return StudyTerms(*_mulsupcon(s, keep, ya, yc), zero, zero)
        q = (z @ p.T) / temperature
        if kind == "msc":
            return StudyTerms(*_msc(s, q, keep, ya, yc, 1.0 if alpha is None else alpha, beta), zero, zero)
        alpha = 0.0 if alpha is None else alpha
        regularise = kind == "reg"
        own = _reg_instances(s, q, keep, ya, yc, alpha, regularise)
        shared = _reg_prototypes(zc, p, yc, valid, temperature, alpha, regularise)
        return StudyTerms(own[0], own[1], shared[0], shared[1])
