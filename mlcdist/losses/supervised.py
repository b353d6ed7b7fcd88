r"""The study's supervised baselines on logits (B x C): ZLPR, ASL, BCE.

**zlpr** (textbook value): :math:`\ell_i = \log(1 + \sum_{y_{ic}=1} e^{-x_{ic}})
+ \log(1 + \sum_{y_{ic}=0} e^{x_{ic}})`, mean over i. The study's code returns this minus its
detached stabilisers :math:`m^+_i + m^-_i`; the gradient is the same. A row without positives (or
negatives) has that term 0 (the study's code gives NaN).

**asl** (Ridnik et al.; mean, as the study): :math:`p = \sigma(x)`,
:math:`q = \min(1 - p + \mathrm{clip}, 1)`,
:math:`\ell = [y \log \max(p, \epsilon) + (1-y) \log \max(q, \epsilon)]
\,(1 - p y - q (1-y))^{\gamma^+ y + \gamma^- (1-y)}`, :math:`\mathcal{L} = -\mathrm{mean}\,\ell`;
gradient flows through the focusing weight.

**bce**: mean binary cross-entropy with logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcdist.losses._study import compute_dtype, full_precision


def _check(name: str, logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 2 or logits.shape != labels.shape:
        raise ValueError(f"{name}: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} "
                         f"must both be B x C")


@full_precision
def zlpr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Zero-bounded log-sum-exp pairwise loss (Su et al. 2022), textbook value, 0-dim tensor.

    Example:
        >>> zlpr_loss(torch.zeros(2, 3), torch.tensor([[1., 0, 0], [0, 1, 1]])).shape
        torch.Size([])
    """
    _check("zlpr", logits, labels)
    dtype = compute_dtype(logits)
    x, y = logits.to(dtype), labels.to(dtype) > 0
    zero = torch.zeros_like(x[:, :1])
    pos = torch.logsumexp(torch.cat([(-x).masked_fill(~y, float("-inf")), zero], 1), dim=1)
    neg = torch.logsumexp(torch.cat([x.masked_fill(y, float("-inf")), zero], 1), dim=1)
    return (pos + neg).mean()


@full_precision
def asymmetric_loss(logits: Tensor, labels: Tensor, gamma_neg: float = 1.0, gamma_pos: float = 0.0,
                    clip: float = 0.0, eps: float = 1e-5) -> Tensor:
    """Asymmetric loss, mean over B x C as the study's code (defaults are the study's), 0-dim.

    Example:
        >>> asymmetric_loss(torch.zeros(2, 3), torch.tensor([[1., 0, 0], [0, 1, 1]])).shape
        torch.Size([])
    """
    _check("asl", logits, labels)
    dtype = compute_dtype(logits)
    x, y = logits.to(dtype), labels.to(dtype)
    p = torch.sigmoid(x)
    q = 1.0 - p
    if clip > 0:
        q = (q + clip).clamp(max=1.0)
    ell = y * torch.log(p.clamp(min=eps)) + (1.0 - y) * torch.log(q.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        truth_prob = p * y + q * (1.0 - y)
        ell = ell * torch.pow(1.0 - truth_prob, gamma_pos * y + gamma_neg * (1.0 - y))
    return -ell.mean()


@full_precision
def bce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy with logits over B x C, 0-dim tensor.

    Example:
        >>> bce_loss(torch.zeros(2, 3), torch.ones(2, 3)).shape
        torch.Size([])
    """
    _check("bce", logits, labels)
    dtype = compute_dtype(logits)
    return F.binary_cross_entropy_with_logits(logits.to(dtype), labels.to(dtype))
