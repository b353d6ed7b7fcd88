r"""Dropout whose CPU mask costs a third of ``nn.Dropout``'s.

.. math::  y = x \odot m / (1 - p), \qquad m_i = [u_i < 1 - p],\ u_i \sim U[0, 1)

the same distribution as :class:`torch.nn.Dropout`. On the CPU, ``nn.Dropout`` draws the mask
with ``bernoulli_``, one double per entry through a serial kernel (about 7 ns an entry): on the
paper's vector MLP (batch 32, widths 256-512-256, query and key encoders) that was 18% of a
pretraining step. Here :math:`u` comes from ``torch.rand`` (float32) and the comparison runs in
place, about 3 ns an entry. Both draw from the global torch generator, so ``torch.manual_seed``
and a checkpoint's RNG state govern the masks as before; the masks themselves differ from
``nn.Dropout``'s (another draw of the same distribution). Other devices keep the fused kernel.

Shapes: any. Example::

    >>> drop = Dropout(0.2)
    >>> y = drop(torch.ones(4, 1000))
    >>> bool(((y == 0) | (y == 1.25)).all())
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, state and ``eval`` behaviour) with a faster CPU mask."""

    def forward(self, x: Tensor) -> Tensor:
        if (not self.training or self.p == 0.0 or self.p == 1.0 or self.inplace
                or x.device.type != "cpu" or not x.is_floating_point()):
            return F.dropout(x, self.p, self.training, self.inplace)
        keep = 1.0 - self.p
        mask = torch.rand(x.shape).lt_(keep)  # float32 draws: bf16 ones would skew 1 - p
        if mask.dtype != x.dtype:
            mask = mask.to(x.dtype)
        return x * mask.mul_(1.0 / keep)
