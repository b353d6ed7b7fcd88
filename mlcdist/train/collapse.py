r"""Collapse guard: is the encoder mapping every input onto (nearly) one point?

A collapsed contrastive encoder is silent: the loss sits at or above :math:`\ln N` (every one
of the :math:`N` candidates equally likely) and nothing crashes. Two cheap statistics expose it,
read on logging steps only (they are host syncs):

* the mean pairwise cosine of the batch's L2-normalised query embeddings
  :math:`z \in \mathbb{R}^{B \times D}`,

  .. math::  \bar c = \frac{1}{B(B-1)} \sum_{i \ne j} \frac{z_i^\top z_j}{\lVert z_i\rVert \lVert z_j\rVert}
             = \frac{\lVert \textstyle\sum_i \hat z_i \rVert^2 - B}{B(B-1)}

  (1 when collapsed; near 0 for spread-out embeddings), computed in :math:`O(BD)`;
* the loss next to :math:`\ln N`, the loss of a uniform guess over the candidates.

:class:`CollapseGuard` fires once when :math:`\bar c` exceeds a threshold for several
consecutive logging windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

COLLAPSE_COSINE = 0.95  # mean query cosine above which a window counts as collapsed
COLLAPSE_WINDOWS = 3  # consecutive collapsed logging windows before the warning


def mean_pairwise_cosine(embeddings: Tensor) -> Tensor:
    """Off-diagonal mean of the cosine Gram matrix of ``embeddings`` (B x D, B >= 2); a 0-d float32
    tensor. Rows are normalised here, so un-normalised inputs are fine; zero rows count as 0."""
    if embeddings.dim() != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"need a B x D batch with B >= 2, got shape {tuple(embeddings.shape)}")
    z = torch.nn.functional.normalize(embeddings.detach().float(), dim=1)
    b = z.shape[0]
    diagonal = (z * z).sum()  # B, less any zero rows
    return ((z.sum(0).square().sum() - diagonal) / (b * (b - 1))).clamp(-1.0, 1.0)


def uniform_loss(num_candidates: int) -> float:
    r""":math:`\ln N`: the contrastive loss of an encoder that cannot tell the candidates apart."""
    return math.log(max(int(num_candidates), 1))


@dataclass
class CollapseGuard:
    """Counts consecutive collapsed logging windows; :meth:`update` is True exactly once, on the
    window that completes the first run of ``windows`` collapsed ones."""

    threshold: float = COLLAPSE_COSINE
    windows: int = COLLAPSE_WINDOWS
    streak: int = 0
    fired: bool = False

    def update(self, mean_cosine: float) -> bool:
        self.streak = self.streak + 1 if mean_cosine > self.threshold else 0
        if self.fired or self.streak < self.windows:
            return False
        self.fired = True
        return True


def collapse_warning(step: int, mean_cosine: float, loss: float, ln_candidates: float, windows: int) -> str:
    """The one loud line the trainer prints when the guard fires."""
    return (f"WARNING: embeddings collapsed at step {step}: mean query cosine {mean_cosine:.3f} for "
            f"{windows} logging windows, loss {loss:.3f} vs ln(candidates) {ln_candidates:.3f}. The "
            "encoder maps every input to one point and will not learn; lower optim.lr, add "
            "schedule.warmup_epochs or use optim.name=adam (see the header of recipes/base/image.yaml)")
