r"""The study's in-batch MulSupCon (``mulsupcon``): one view, self excluded, no queue.

.. math::
    \log p_{ij} = s_{ij} - \log \sum_{k \neq i} e^{s_{ik}},\quad
    \mathcal{L} = \frac{1}{M} \sum_{(i,c):\, y_{ic}=1} \frac{-1}{K_c - 1 + \epsilon}
                  \sum_{j \neq i,\, y_{jc}=1} \log p_{ij}

with :math:`K_c = \sum_j y_{jc}` and :math:`M = \sum_i |y_i|`: a pair (i, c) without another
sample carrying c contributes 0 but counts in M (the study's convention). Dense:
:math:`G = (S \odot \mathrm{off}) Y - \mathrm{lse}\,(K - Y)` (B x C). A batch without labels gives 0
(the study's code raises).
"""

from __future__ import annotations

import torch  # noqa: F401 (the docstring example)
from torch import Tensor

from mlcdist.losses._study import EPS, check_pair, full_precision, in_batch_scores, off_diagonal, self_excluded_lse


@full_precision
def mulsupcon_in_batch(features: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """In-batch MulSupCon as the study runs it, 0-dim tensor.

    Args:
        features: B x D raw projections (normalised inside).
        labels: B x C multi-hot 0/1.
        temperature: :math:`\\tau`.

    Example:
        >>> x, y = torch.randn(4, 8), torch.tensor([[1., 0], [1, 1], [0, 1], [0, 0]])
        >>> mulsupcon_in_batch(x, y).shape
        torch.Size([])
    """
    check_pair("mulsupcon", features, labels)
    scores, y = in_batch_scores(features, labels, temperature)
    lse = self_excluded_lse(scores)
    others = y.sum(0, keepdim=True) - y  # K_c - y_ic: positives of pair (i, c)
    pos_log_prob = (scores * off_diagonal(len(y), y)) @ y - lse.unsqueeze(1) * others
    per_pair = -pos_log_prob / (others + EPS) * y
    return per_pair.sum() / y.sum().clamp_min(1.0)
