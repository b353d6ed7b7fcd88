r"""The study's label-prototype losses: ``proto`` (prototypes only) and ``msc`` (ABALONE's L_MSC).

Notation: :math:`z_i` unit features, :math:`p_c` unit prototypes (C x D),
:math:`s_{ij} = z_i \cdot z_j / \tau`, :math:`q_{ic} = z_i \cdot p_c / \tau`, :math:`n_i = |y_i|`,
:math:`U_{ij} = |y_i \cup y_j|`.

**proto**: :math:`\mathcal{L} = \frac{1}{B'} \sum_{i: n_i > 0} \frac{-1}{n_i} \sum_c y_{ic}
\log \mathrm{softmax}_c(q_i)`.

**msc**: candidates are the other samples (down-weighted by :math:`\beta` in the denominator
only) and all prototypes;
:math:`D_i = \beta \sum_{j \neq i} e^{s_{ij}} + \sum_c e^{q_{ic}}`,
:math:`N_{ic} = y_{ic}(1 + \alpha \sum_{j \neq i} y_{jc} / U_{ij})`,
:math:`v_{ic} = y_{ic} / (N_{ic} + \epsilon)`,
:math:`w_{ij} = \alpha \sum_c y_{ic} y_{jc} / (U_{ij} (N_{ic} + \epsilon))`, and

.. math::
    \mathcal{L} = \frac{1}{B'} \sum_{i: n_i > 0} \frac{-1}{n_i}
        \Big[\sum_{j \neq i} w_{ij} (s_{ij} - \log D_i) + \sum_c v_{ic} (q_{ic} - \log D_i)\Big]

Dense: :math:`W = \alpha\, U^{-1}_{\mathrm{off}} \odot (V Y^\top)` (B x B), no B x B x C tensor.
Convention (the study's code gives NaN): a sample without labels is not an anchor and is not
counted in :math:`B'`, but stays a candidate (a negative); a batch without labels gives 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mlcdist.losses._study import EPS, full_precision, off_diagonal, prototype_inputs


@full_precision
def proto_loss(features: Tensor, labels: Tensor, prototypes: Tensor, temperature: float = 0.1) -> Tensor:
    """Cross-entropy of each sample against the label prototypes (the study's ``proto``).

    Args:
        features: B x D raw projections; prototypes: C x D raw (both normalised inside).
        labels: B x C multi-hot 0/1.

    Example:
        >>> x, p, y = torch.randn(3, 8), torch.randn(2, 8), torch.tensor([[1., 0], [1, 1], [0, 1]])
        >>> proto_loss(x, y, p).shape
        torch.Size([])
    """
    z, p, y = prototype_inputs("proto", features, labels, prototypes)
    log_pi = torch.log_softmax((z @ p.T) / temperature, dim=1)
    size = y.sum(1)
    per_anchor = -(y * log_pi).sum(1) / size.clamp_min(1.0)
    return per_anchor.sum() / (size > 0).sum().clamp_min(1).to(y.dtype)


def _msc_weights(y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """(W, V): instance weights B x B and prototype weights B x C of L_MSC."""
    size = y.sum(1)
    union = size.unsqueeze(1) + size.unsqueeze(0) - y @ y.T
    off = off_diagonal(len(y), y)
    inv_union = torch.where(union > 0, off / union.clamp_min(1.0), torch.zeros_like(union))
    norm = y * (1.0 + alpha * (inv_union @ y))  # N_ic, B x C
    proto_w = y / (norm + EPS)
    inst_w = alpha * inv_union * (proto_w @ y.T)
    return inst_w, proto_w


@full_precision
def msc_loss(features: Tensor, labels: Tensor, prototypes: Tensor, temperature: float = 0.1,
             alpha: float = 1.0, beta: float = 0.1) -> Tensor:
    """ABALONE's L_MSC as the study computes it (``msc``), 0-dim tensor.

    Args:
        features: B x D raw projections; prototypes: C x D raw (both normalised inside).
        labels: B x C multi-hot 0/1.
        temperature: :math:`\\tau`; alpha: weight of instance positives (study: 1);
        beta: weight of instances in the denominator (study: 0.1).

    Example:
        >>> x, p, y = torch.randn(3, 8), torch.randn(2, 8), torch.tensor([[1., 0], [1, 1], [0, 1]])
        >>> msc_loss(x, y, p).shape
        torch.Size([])
    """
    z, p, y = prototype_inputs("msc", features, labels, prototypes)
    inst = (z @ z.T) / temperature
    proto = (z @ p.T) / temperature
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    log_beta = math.log(beta) if beta > 0 else float("-inf")
    candidates = torch.cat([inst.masked_fill(eye, float("-inf")) + log_beta, proto], dim=1)
    log_denom = torch.logsumexp(candidates, dim=1)  # log D_i, B
    inst_w, proto_w = _msc_weights(y, alpha)
    weight_sum = inst_w.sum(1) + proto_w.sum(1)
    pos = (inst_w * inst).sum(1) + (proto_w * proto).sum(1) - weight_sum * log_denom
    size = y.sum(1)
    per_anchor = -pos / size.clamp_min(1.0)
    return per_anchor.sum() / (size > 0).sum().clamp_min(1).to(y.dtype)
