r"""In-place exponential moving average for the momentum (key) encoder.

.. math::  \theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q

Why a float32 master: with :math:`m = 0.999` one step moves :math:`\theta_k` by
:math:`10^{-3}(\theta_q - \theta_k)`, usually far below half a bf16 ulp of :math:`\theta_k`
(:math:`2^{-9}|\theta_k|`), so an EMA computed in bf16 rounds back to the old value every
step and the key encoder never moves. :func:`ema_update_` therefore expects float32 targets;
:class:`EMA` keeps float32 shadows for key parameters stored in lower precision and writes
the rounded result into them after each update.

Only parameters are averaged. BatchNorm running buffers of the key encoder are its own: they
are updated by the key encoder's forward passes in train mode (MoCo v2 behaviour).

Sharding: FSDP2 parameters are ``DTensor``\s; both functions operate on the local shards
(``p.to_local()``), so the query and key encoders must be sharded identically (the parallel
layer's job). Everything else here is ordinary single-process tensor code.
"""

from __future__ import annotations

from typing import Iterable, Union

import torch
from torch import Tensor, nn

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = ()  # type: ignore[assignment,misc]

Momentum = Union[float, Tensor]
ParamSource = Union[nn.Module, Iterable[Tensor]]
_MASTER_DTYPES = (torch.float32, torch.float64)


def _local(t: Tensor) -> Tensor:
    """This rank's shard of an FSDP2 DTensor parameter, else the tensor's data."""
    t = t.detach()
    return t.to_local() if isinstance(t, DTensor) else t


def _tensors(source: ParamSource) -> list[Tensor]:
    params = source.parameters() if isinstance(source, nn.Module) else source
    return [_local(p) for p in params]


@torch.no_grad()
def ema_update_(target: list[Tensor], source: list[Tensor], momentum: Momentum) -> None:
    r"""MoCo's momentum update with multi-tensor kernels, in place on ``target``:

    .. math::  \theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q

    ``target`` should be float32 (see the module docstring); ``source`` may be any floating
    dtype and is upcast. ``momentum`` may be a Python float or a 0-dim tensor on the device
    (a scheduled momentum then needs no host sync). Lists are aligned: whole tensors or the
    local shards of identically sharded modules (DTensors are reduced to their local shard).
    """
    target = [_local(t) for t in target]
    source = [_local(s) for s in source]
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
    torch._foreach_mul_(target, momentum)
    if isinstance(momentum, Tensor):
        torch._foreach_add_(target, torch._foreach_mul(src, 1 - momentum))
    else:
        torch._foreach_add_(target, src, alpha=1.0 - momentum)


class EMA:
    """Momentum update with a float32 master for every key parameter not already float32.

    ``EMA(key)`` records which key tensors need a shadow (bf16/fp16 ones; float32 key
    parameters are their own master and cost nothing extra). ``update(query, key, m)``
    applies :func:`ema_update_` to the masters and copies them, rounded, into the
    low-precision key tensors. ``query``/``key`` are modules or aligned parameter lists
    (e.g. the local shards the parallel layer hands over). Build the EMA before casting the
    model to bf16 when possible, so the shadows start from exact float32 values.
    """

    def __init__(self, key: ParamSource):
        self.shadow: list[Tensor | None] = [
            None if t.dtype in _MASTER_DTYPES else t.to(torch.float32, copy=True)
            for t in _tensors(key)
        ]

    @torch.no_grad()
    def update(self, query: ParamSource, key: ParamSource, momentum: Momentum) -> None:
        """One EMA step (formula in :func:`ema_update_`) on the float32 masters."""
        q, k = _tensors(query), _tensors(key)
        if not len(q) == len(k) == len(self.shadow):
            raise ValueError(f"EMA.update: {len(q)} query / {len(k)} key tensors, but the EMA was "
                             f"built for {len(self.shadow)}; build it from this key encoder")
        for i, t in enumerate(k):
            if self.shadow[i] is None and t.dtype not in _MASTER_DTYPES:
                # The key was cast after the EMA was built: start a master from its value now.
                self.shadow[i] = t.to(torch.float32, copy=True)
        masters = [k[i] if s is None else s for i, s in enumerate(self.shadow)]
        ema_update_(masters, q, momentum)
        rounded = [i for i, s in enumerate(self.shadow) if s is not None]
        if rounded:
            torch._foreach_copy_([k[i] for i in rounded], [self.shadow[i] for i in rounded])

    @torch.no_grad()
    def copy_to_(self, key: ParamSource) -> None:
        """Write the masters into the key tensors (e.g. after :meth:`load_state_dict`)."""
        k = _tensors(key)
        for i, s in enumerate(self.shadow):
            if s is not None:
                k[i].copy_(s)

    def state_dict(self) -> dict[str, Tensor]:
        """Float32 shadows by parameter index (float32 key parameters live in the model's own
        state_dict). Tensors only: loadable with ``torch.load(weights_only=True)``."""
        return {f"shadow.{i}": s for i, s in enumerate(self.shadow) if s is not None}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        expected = {f"shadow.{i}" for i, s in enumerate(self.shadow) if s is not None}
        if set(state) != expected:
            raise ValueError(
                f"EMA.load_state_dict: keys {sorted(state)[:6]} do not match this EMA's "
                f"{sorted(expected)[:6]}; "
                "was the checkpoint written with the same model and precision?")
        for name, value in state.items():
            dst = self.shadow[int(name.split(".")[1])]
            assert dst is not None
            if value.shape != dst.shape:
                raise ValueError(f"EMA.load_state_dict: {name}: shape {tuple(value.shape)} "
                                 f"vs {tuple(dst.shape)}")
            dst.copy_(value)
