r"""The study's ``base`` loss: SupCon with row-normalised Jaccard positive weights, in-batch.

.. math::
    J_{ij} = \frac{|y_i \cap y_j|}{|y_i \cup y_j| + \epsilon}\ (j \neq i),\quad
    w_{ij} = \frac{J_{ij}}{\sum_k J_{ik} + \epsilon},\quad
    \mathcal{L} = -\frac{1}{A + \epsilon} \sum_i \sum_{j \neq i} w_{ij}
                  \Big(s_{ij} - \log \sum_{k \neq i} e^{s_{ik}}\Big)

with :math:`s_{ij} = z_i \cdot z_j / \tau` and :math:`A` the number of anchors with at least one
positive. Dense: :math:`I = YY^\top`, :math:`U = n 1^\top + 1 n^\top - I` (B x B); no B x B x C
union tensor. B = 1 gives 0 (the study's code gives NaN).
"""

from __future__ import annotations

import torch  # noqa: F401 (the docstring example)
from torch import Tensor

from mlcdist.losses._study import (EPS, check_pair, full_precision, in_batch_scores, off_diagonal,
                                   self_excluded_lse, weighted_log_prob_sum)


@full_precision
def jaccard_supcon(features: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Jaccard-weighted supervised contrastive loss (the study's ``base``), 0-dim tensor.

    Args:
        features: B x D raw projections (normalised inside).
        labels: B x C multi-hot 0/1.
        temperature: :math:`\\tau`.

    Example:
        >>> x, y = torch.randn(4, 8), torch.tensor([[1., 0], [1, 1], [0, 1], [0, 0]])
        >>> jaccard_supcon(x, y).shape
        torch.Size([])
    """
    check_pair("jaccard", features, labels)
    scores, y = in_batch_scores(features, labels, temperature)
    inter = y @ y.T
    size = y.sum(1)
    union = size.unsqueeze(1) + size.unsqueeze(0) - inter
    jac = inter / (union + EPS) * off_diagonal(len(y), y)
    jac_sum = jac.sum(1)
    weights = jac / (jac_sum.unsqueeze(1) + EPS)
    anchors = (jac_sum > 0).sum().to(scores.dtype)
    total = weighted_log_prob_sum(weights, scores, self_excluded_lse(scores))
    return -total / (anchors + EPS)
