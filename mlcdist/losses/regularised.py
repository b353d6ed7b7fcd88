r"""The study's new loss ``reg`` (code ``mscrg``) and its ablation ``reg_plain`` (``mscwrg``).

Nodes are the B samples and the C prototypes (N = B + C): :math:`u = [z; p]`,
:math:`\hat y = [Y; I_C]` (prototype c carries label c). Every node is an anchor; its candidates
are all other nodes: :math:`S_{ab} = u_a \cdot u_b / \tau`,
:math:`\log p_{ab} = S_{ab} - \log \sum_{b' \neq a} e^{S_{ab'}}`.

.. math::
    x_{ab} = \frac{\hat y_a \cdot \hat y_b}{|\hat y_b|},\quad
    f_{ab} = x_{ab}^\alpha\ (\alpha \ge 0),\ [x_{ab} \ge 1 - \epsilon]\ (\alpha < 0),\ f_{aa} = 0

    R_{ac} = \sum_{b \neq a} f_{ab} \hat y_{ac} \hat y_{bc},\quad
    w_{ab} = \frac{1}{|\hat y_a|} \sum_c \frac{f_{ab} \hat y_{ac} \hat y_{bc}}{R_{ac} + \epsilon}

    \mathcal{L}_{\text{reg\_plain}} = -\frac{1}{A} \sum_a \sum_{b \neq a} w_{ab} \log p_{ab},\quad
    \mathcal{L}_{\text{reg}} = -\frac{1}{A} \sum_a \sum_{b \neq a}
        \big[w_{ab} \log p_{ab} + r_{ab} S_{ab}\big]

with :math:`A = \#\{a : \sum_b w_{ab} \neq 0\}` and the constant
:math:`r_{ab} = \max(\mathrm{sg}(\sigma_{ab}) - w_{ab}, 0)\,[w_{ab} \neq 0]`, :math:`\sigma` the
self-excluded softmax. Then :math:`\partial \mathcal{L}_{\text{reg}} / \partial S_{ab}
= (W_a \sigma_{ab} - w_{ab} - r_{ab}) / A`: a positive holding more than its target share
(:math:`\sigma_{ab} > w_{ab}`) is no longer pushed away. The regulariser is part of the value.

Dense: :math:`F = f(X) \odot \mathrm{off}`, :math:`R = \hat Y \odot (F \hat Y)`,
:math:`W = F \odot ((\hat Y / (R + \epsilon)) \hat Y^\top) / |\hat y_a|`: N x N and N x C only.
Convention (the study's code gives NaN): a sample without labels is not an anchor (w = 0) but stays
a candidate; A = 0 gives 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlcdist.losses._study import (EPS, check_prototypes, compute_dtype, full_precision, off_diagonal,
                                   self_excluded_lse, unit_rows, weighted_log_prob_sum)


def node_weights(node_labels: Tensor, alpha: float) -> Tensor:
    """Positive weights w (N x N, zero diagonal) from the nodes' multi-hot labels (N x C)."""
    y = node_labels
    inter = y @ y.T
    size = y.sum(1)
    overlap = inter / size.clamp_min(1.0).unsqueeze(0)  # x_ab: divided by the candidate's count
    f = overlap.pow(alpha) if alpha >= 0 else (overlap >= 1.0 - EPS).to(y.dtype)
    f = f * off_diagonal(len(y), y)
    per_label = y / (y * (f @ y) + EPS)  # y_ac / (R_ac + eps)
    return f * (per_label @ y.T) / size.clamp_min(1.0).unsqueeze(1)


def regularised_from_scores(scores: Tensor, weights: Tensor, regularise: bool) -> Tensor:
    """The loss from node scores S (N x N, = u u^T / tau) and weights (:func:`node_weights`)."""
    lse = self_excluded_lse(scores)
    total = weighted_log_prob_sum(weights, scores, lse)
    if regularise:
        with torch.no_grad():
            eye = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
            share = torch.exp(scores.masked_fill(eye, float("-inf")) - lse.unsqueeze(1))
            extra = (share - weights).clamp_min(0.0) * (weights != 0)
        total = total + (extra * scores).sum()
    anchors = (weights.sum(1) != 0).sum().clamp_min(1).to(scores.dtype)
    return -total / anchors


def _reg(name: str, features: Tensor, labels: Tensor, prototypes: Tensor, temperature: float,
         alpha: float, regularise: bool) -> Tensor:
    check_prototypes(name, features, labels, prototypes)
    dtype = compute_dtype(features)
    nodes = torch.cat([unit_rows(features, dtype), unit_rows(prototypes, dtype)])
    num_labels = labels.shape[1]
    node_labels = torch.cat([labels.to(dtype),
                             torch.eye(num_labels, dtype=dtype, device=labels.device)])
    weights = node_weights(node_labels, alpha)
    return regularised_from_scores((nodes @ nodes.T) / temperature, weights, regularise)


@full_precision
def reg_loss(features: Tensor, labels: Tensor, prototypes: Tensor, temperature: float = 0.1,
             alpha: float = 0.0) -> Tensor:
    """The study's gradient-regularised loss (``mscrg``), 0-dim tensor.

    Args:
        features: B x D raw projections; prototypes: C x D raw (both normalised inside).
        labels: B x C multi-hot 0/1.
        temperature: :math:`\\tau`; alpha: overlap exponent (< 0: hard subset threshold).

    Example:
        >>> x, p, y = torch.randn(3, 8), torch.randn(2, 8), torch.tensor([[1., 0], [1, 1], [0, 1]])
        >>> reg_loss(x, y, p).shape
        torch.Size([])
    """
    return _reg("reg", features, labels, prototypes, temperature, alpha, regularise=True)


@full_precision
def reg_plain_loss(features: Tensor, labels: Tensor, prototypes: Tensor, temperature: float = 0.1,
                   alpha: float = 0.0) -> Tensor:
    """:func:`reg_loss` without the regulariser (``mscwrg``), 0-dim tensor; same arguments."""
    return _reg("reg_plain", features, labels, prototypes, temperature, alpha, regularise=False)
