r"""In-place exponential moving average for the momentum (key) encoder.

.. math::  \theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q

Why a float32 master: with :math:`m = 0.999` one step moves :math:`\theta_k` by
:math:`10^{-3}(\theta_q - \theta_k)`, usually far below half a bf16 ulp of :math:`\theta_k`
(:math:`2^{-9}|\theta_k|`), so an EMA computed in bf16 rounds back to the old value every
step and the key encoder never moves. :func:`ema_update_` therefore expects float32 targets:
the trainer keeps the key encoder's parameters in float32 (bf16 autocast only changes the
compute).

Only parameters are averaged. BatchNorm running buffers of the key encoder are its own: they
are updated by the key encoder's forward passes in train mode (MoCo v2 behaviour).

Plain tensors only: under FSDP2 / ZeRO-3 the parallel layer hands over aligned local shards
(``mlcdist.parallel.state.ema_views``).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

Momentum = Union[float, Tensor]


@torch.no_grad()
def ema_update_(target: list[Tensor], source: list[Tensor], momentum: Momentum) -> None:
    r"""MoCo's momentum update with multi-tensor kernels, in place on ``target``:

    .. math::  \theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q

    ``target`` should be float32 (see the module docstring); ``source`` may be any floating
    dtype and is upcast. ``momentum`` may be a Python float or a 0-dim tensor on the device
    (a scheduled momentum then needs no host sync). Lists are aligned: whole tensors or the
    local shards of identically sharded modules.
    """
    target = [t.detach() for t in target]
    source = [s.detach() for s in source]
    if len(target) != len(source):
        raise ValueError(
            f"ema_update_: {len(target)} target tensors but {len(source)} source tensors")
    if not target:
        return
    for i, (t, s) in enumerate(zip(target, source)):
        if t.shape != s.shape:
            raise ValueError(
                f"ema_update_: tensor {i}: target {tuple(t.shape)} vs source {tuple(s.shape)}")
    src = [s.to(t.dtype) if s.dtype != t.dtype else s for t, s in zip(target, source)]
    # m*k + (1-m)*q in two passes; a one-pass foreach lerp (0.12 vs 0.21 ms on yeast's MLP) rounds
    # differently, and that moved scene's MulSupCon row of tools.reproduce by up to 2 seed sds
    torch._foreach_mul_(target, momentum)
    if isinstance(momentum, Tensor):
        torch._foreach_add_(target, torch._foreach_mul(src, 1 - momentum))
    else:
        torch._foreach_add_(target, src, alpha=1.0 - momentum)
