"""Learning-rate and key-momentum schedules as pure functions of the global optimizer step."""

from __future__ import annotations

import math


def _check(step: int, total_steps: int) -> None:
    if step < 0 or total_steps <= 0:
        raise ValueError("schedule: need step >= 0 and total_steps > 0, "
                         f"got step={step}, total_steps={total_steps}")


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0,
          kind: str = "cosine", min_lr: float = 0.0) -> float:
    r"""Linear warm-up, then a half cosine down to ``min_lr`` (or a constant).

    With :math:`T` = ``total_steps``, :math:`T_w` = ``warmup_steps``:

    .. math::  \eta_t = \begin{cases}
               \eta_0\,(t+1)/T_w & t < T_w \\
               \eta_{min} + (\eta_0 - \eta_{min})\,\tfrac12\big(1 + \cos(\pi p_t)\big),
               \ p_t = \min\!\big(1, \tfrac{t - T_w}{\max(1, T - T_w)}\big) & \text{cosine} \\
               \eta_0 & \text{constant}
               \end{cases}

    Warm-up starts at :math:`\eta_0/T_w` (not 0, which would waste a step) and reaches
    :math:`\eta_0` at :math:`t = T_w - 1`; steps past :math:`T` stay at :math:`\eta_{min}`.
    """
    _check(step, total_steps)
    if warmup_steps < 0:
        raise ValueError(f"lr_at: warmup_steps must be >= 0, got {warmup_steps}")
    if kind not in ("cosine", "constant"):
        raise ValueError(
            f"lr_at: kind must be 'cosine' or 'constant' (schedule.kind), got {kind!r}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def momentum_at(step: int, total_steps: int, base_momentum: float, kind: str = "constant") -> float:
    r"""Key-encoder momentum: constant :math:`m_0`, or BYOL's cosine increase to 1:

    .. math::  m_k = 1 - (1 - m_0)\,\tfrac12\big(\cos(\pi \min(k, K)/K) + 1\big)

    so :math:`m_0 = ` ``base_momentum`` at :math:`k = 0` and :math:`m_K = 1` (frozen key).
    """
    _check(step, total_steps)
    if kind not in ("constant", "cosine"):
        raise ValueError("momentum_at: kind must be 'constant' or 'cosine' "
                         f"(model.momentum_schedule), got {kind!r}")
    if kind == "constant":
        return base_momentum
    progress = min(step / total_steps, 1.0)
    return 1.0 - (1.0 - base_momentum) * 0.5 * (1.0 + math.cos(math.pi * progress))
