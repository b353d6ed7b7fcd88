r"""The multi-label supervised contrastive loss family (pure functions, no distributed code).

Notation (paper, Zhang & Wu AAAI-24): anchor :math:`i` with query embedding :math:`z_q^{(i)}`
and label set :math:`y^{(i)}`; candidates :math:`a \in \mathcal{A}` (every valid key row: the
current batch's keys and the queue) with keys :math:`z_k^{(a)}`; :math:`s_a^{(i)} = z_q^{(i)}
\cdot z_k^{(a)}` and

.. math::  \ell_{ia} = \log \frac{e^{s_a^{(i)}/\tau}}{\sum_{a' \in \mathcal{A}} e^{s_{a'}^{(i)}/\tau}}

**MulSupCon**, eq. (4)+(5): one positive set per label :math:`j \in y^{(i)}`,
:math:`\mathcal{P}_j = \{m : j \in y^{(m)}\}`,

.. math::  \mathcal{L} = \frac{1}{\sum_i |y^{(i)}|} \sum_i \sum_{j \in y^{(i)}}
           \frac{-1}{|\mathcal{P}_j|} \sum_{p \in \mathcal{P}_j} \ell_{ip}

Because :math:`\mathcal{P}_j` does not depend on the anchor, the inner sum is dense algebra:
:math:`\sum_{p \in \mathcal{P}_j} \ell_{ip} = z_q^{(i)} \cdot K_j / \tau - |\mathcal{P}_j|
\,\mathrm{lse}_i` with the class key sums :math:`K_j = \sum_{p \in \mathcal{P}_j} z_k^{(p)}`
(a D x C matrix). No per-label replication of the B x N score matrix is needed.

**weighted**, eq. (6): each anchor's label terms are averaged (weight :math:`1/|y^{(i)}|`) and
the loss is the mean over labelled anchors.

**ALL** / **ANY**, eq. (1): one positive set per anchor, :math:`\{m : y^{(m)} = y^{(i)}\}` or
:math:`\{m : y^{(m)} \cap y^{(i)} \neq \varnothing\}`; the loss is the mean over anchors of
:math:`-\frac{1}{|\mathcal{P}^{(i)}|}\sum_{p} \ell_{ip}`.

With one label per sample all four reduce to SupCon (Khosla et al. 2020).

Conventions: anchors with no labels contribute nothing and are not counted; a label (MulSupCon,
weighted) or an anchor (ALL, ANY) whose positive set is empty among the valid candidates is
skipped and not counted; an all-empty batch gives 0. Scores and log-softmax are float32 whatever
the input dtype. :func:`multilabel_supcon_terms` returns the numerator and the normaliser
separately so a distributed trainer can divide by the global normaliser.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

import torch
from torch import Tensor

Positives = Literal["mulsupcon", "weighted", "all", "any"]
POSITIVES: tuple[str, ...] = ("mulsupcon", "weighted", "all", "any")


class LossTerms(NamedTuple):
    """``loss = numerator / normaliser``; ``normaliser`` carries no gradient."""

    numerator: Tensor
    normaliser: Tensor


class _ScoreLogSumExp(torch.autograd.Function):
    r""":math:`\mathrm{lse}_i = \log \sum_{a\,\mathrm{valid}} e^{q_i \cdot k_a}`, fused.

    Autograd on ``logsumexp(q @ k.T)`` keeps several B x N temporaries alive and makes several
    passes over them; here the score matrix is the only one. The forward pass turns it in place
    into :math:`e^{s_{ia} - \max_a s_{ia}}`, which the backward pass rescales in place into
    :math:`\partial \mathrm{lse}_i / \partial s_{ia} = \mathrm{softmax}_a(s_i)`.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, valid: Optional[Tensor]) -> Tensor:
        shifted = q @ k.T
        if valid is not None:
            shifted.masked_fill_(~valid, float("-inf"))
        row_max = shifted.amax(dim=1, keepdim=True).clamp_min(torch.finfo(shifted.dtype).min)
        sum_exp = shifted.sub_(row_max).exp_().sum(dim=1)
        ctx.save_for_backward(q, k, shifted, sum_exp)
        ctx.used = False
        return row_max.squeeze(1) + sum_exp.log()

    @staticmethod
    def backward(ctx, grad_lse: Tensor):
        if ctx.used:
            raise RuntimeError("multilabel_supcon: backward through the loss twice is not supported")
        ctx.used = True
        q, k, shifted, sum_exp = ctx.saved_tensors
        weights = shifted.mul_((grad_lse / sum_exp).unsqueeze(1))  # g_i * softmax(s_i), B x N
        grad_q = weights @ k if ctx.needs_input_grad[0] else None
        grad_k = weights.T @ q if ctx.needs_input_grad[1] else None
        return grad_q, grad_k, None


def _check(query: Tensor, keys: Tensor, query_labels: Tensor, key_labels: Tensor,
           key_valid: Optional[Tensor], positives: str) -> None:
    if positives not in POSITIVES:
        raise ValueError(f"positives={positives!r}: expected one of {', '.join(POSITIVES)}")
    if query.dim() != 2 or keys.dim() != 2 or query.shape[1] != keys.shape[1]:
        raise ValueError(f"query {tuple(query.shape)} and keys {tuple(keys.shape)} must be B x D and N x D")
    if query_labels.shape[0] != query.shape[0] or key_labels.shape[0] != keys.shape[0]:
        raise ValueError(
            f"labels {tuple(query_labels.shape)} / {tuple(key_labels.shape)} must have one row per "
            f"query ({query.shape[0]}) / key ({keys.shape[0]})")
    if query_labels.shape[1] != key_labels.shape[1]:
        raise ValueError(f"query and key labels disagree on the class count: "
                         f"{query_labels.shape[1]} vs {key_labels.shape[1]}")
    if key_valid is not None and key_valid.shape != (keys.shape[0],):
        raise ValueError(f"key_valid must be an N-bool mask, got shape {tuple(key_valid.shape)}")


def multilabel_supcon_terms(
    query: Tensor,
    keys: Tensor,
    query_labels: Tensor,
    key_labels: Tensor,
    temperature: float = 0.1,
    positives: Positives = "mulsupcon",
    key_valid: Optional[Tensor] = None,
) -> LossTerms:
    """Numerator and normaliser of :func:`multilabel_supcon` (see the module docstring)."""
    _check(query, keys, query_labels, key_labels, key_valid, positives)
    with torch.autocast(device_type=query.device.type, enabled=False):  # float32 under AMP too
        return _terms(query, keys, query_labels, key_labels, temperature, positives, key_valid)


def _terms(query: Tensor, keys: Tensor, query_labels: Tensor, key_labels: Tensor, temperature: float,
           positives: str, key_valid: Optional[Tensor]) -> LossTerms:
    q = query.float() * (1.0 / temperature)  # fold 1/tau into the small B x D side
    k = keys.float()
    yq = query_labels.float()
    yk = key_labels.float()
    if key_valid is not None:
        valid = key_valid.to(torch.bool)
        k = k * valid.unsqueeze(1)  # invalid keys drop out of every positive sum
        yk = yk * valid.unsqueeze(1)

    lse = _ScoreLogSumExp.apply(q, k, valid if key_valid is not None else None)  # B

    if positives in ("mulsupcon", "weighted"):
        class_count = yk.sum(0)  # |P_j|, C
        class_key_sum = k.T @ yk  # K_j = sum of the keys carrying j, D x C
        pos_logit_sum = q @ class_key_sum  # sum_{p in P_j} s_ip / tau, B x C
        usable = yq * (class_count > 0)  # labels with at least one positive
        mean_log_prob = pos_logit_sum / class_count.clamp_min(1) - lse.unsqueeze(1)
        per_label = -mean_log_prob * usable  # B x C
        if positives == "mulsupcon":
            return LossTerms(per_label.sum(), usable.sum().detach())
        labels_per_anchor = usable.sum(1)
        per_anchor = per_label.sum(1) / labels_per_anchor.clamp_min(1)
        return LossTerms(per_anchor.sum(), (labels_per_anchor > 0).sum().float().detach())

    logits = q @ k.T  # s / tau, B x N; exactly 0 at invalid keys
    overlap = yq @ yk.T  # B x N shared-label counts (exact small integers in float32)
    if positives == "any":
        is_positive = overlap > 0
    else:
        size_q = yq.sum(1, keepdim=True)
        size_k = yk.sum(1).unsqueeze(0)
        is_positive = (overlap == size_q) & (size_k == size_q) & (size_q > 0)
    is_positive = is_positive.float()
    pos_count = is_positive.sum(1)
    pos_logit_sum = (is_positive * logits).sum(1)
    anchors = ((pos_count > 0) & (yq.sum(1) > 0)).float()
    per_anchor = -(pos_logit_sum / pos_count.clamp_min(1) - lse) * anchors
    return LossTerms(per_anchor.sum(), anchors.sum().detach())


def multilabel_supcon(
    query: Tensor,
    keys: Tensor,
    query_labels: Tensor,
    key_labels: Tensor,
    temperature: float = 0.1,
    positives: Positives = "mulsupcon",
    key_valid: Optional[Tensor] = None,
) -> Tensor:
    """Multi-label supervised contrastive loss (scalar, float32).

    Args:
        query: B x D L2-normalised anchor embeddings (query encoder).
        keys: N x D L2-normalised candidate embeddings; every row is a candidate, so the
            caller decides whether the anchors' own keys and the queue are included.
        query_labels: B x C multi-hot labels of the anchors (any dtype).
        key_labels: N x C multi-hot labels of the keys.
        temperature: :math:`\\tau`.
        positives: ``"mulsupcon"`` eq. (4)+(5), ``"weighted"`` eq. (6), ``"all"`` or
            ``"any"`` eq. (1).
        key_valid: optional N-bool mask; False rows (queue slots not yet filled) are never
            candidates, neither in the denominator nor as positives.
    """
    terms = multilabel_supcon_terms(query, keys, query_labels, key_labels, temperature,
                                    positives, key_valid)
    return terms.numerator / terms.normaliser.clamp_min(1.0)


def bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy over all B x C entries, computed in float32."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float())
