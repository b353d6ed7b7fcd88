"""Optimizers: SGD (paper default), Adam, AdamW and LARS; fused kernels where available."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlcdist.config import OptimConfig


class LARS(torch.optim.Optimizer):
    r"""Layer-wise adaptive rate scaling (You et al. 2017) on top of SGD with momentum.

    For weight matrices (``ndim > 1``) the update is scaled by the trust ratio
    :math:`\eta \, \lVert w \rVert / \lVert g + \lambda w \rVert`; biases and norm weights use
    plain SGD and no weight decay, as in SimCLR/BYOL. Vectorised per step with foreach ops.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[Tensor]) -> None:
        """One group's update in multi-tensor kernels (no per-parameter Python loop of kernels)."""
        grads = [p.grad for p in params]
        scaled = [i for i, p in enumerate(params) if p.ndim > 1]
        updates = [g.clone() for g in grads]
        if scaled:
            s_params, s_updates = [params[i] for i in scaled], [updates[i] for i in scaled]
            if group["weight_decay"]:
                torch._foreach_add_(s_updates, s_params, alpha=group["weight_decay"])
            w_norm = torch.stack(torch._foreach_norm(s_params))
            u_norm = torch.stack(torch._foreach_norm(s_updates))
            # the trust ratio stays on the device: no host sync
            ratio = torch.where((w_norm > 0) & (u_norm > 0), group["trust_coefficient"] * w_norm / u_norm,
                                torch.ones_like(w_norm))
            torch._foreach_mul_(s_updates, list(ratio.unbind()))
        started = ["momentum_buffer" in self.state[p] for p in params]
        bufs = [self.state[p]["momentum_buffer"] for p, s in zip(params, started) if s]
        if bufs:
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, [u for u, s in zip(updates, started) if s])
        for p, u, s in zip(params, updates, started):
            if not s:  # first step: the buffer is the update itself
                self.state[p]["momentum_buffer"] = u
        torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-group["lr"])


def _decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-D tensors)."""
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _fusable(module: nn.Module) -> bool:
    """Fused kernels (one launch for all parameters) exist on CUDA and, since torch 2.4, on CPU,
    where they make Adam's update ~2x faster than the per-tensor loop (yeast's MLP: 0.4 vs 0.9 ms).
    FSDP2's DTensor shards are left to the foreach path."""
    from torch.distributed.tensor import DTensor
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    params = list(module.parameters())
    supported = _get_fused_kernels_supported_devices()
    return bool(params) and all(p.device.type in supported and not isinstance(p, DTensor) for p in params)


def kernel_choice(module: nn.Module, fused: bool = True) -> dict:
    """``{"fused": True}`` where the fused kernels serve ``module`` (and ``fused``), else
    ``{"foreach": True}``: the keyword a torch optimizer over ``module`` is built with."""
    return {"fused": True} if fused and _fusable(module) else {"foreach": True}


def build_optimizer(cfg: OptimConfig, module: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg`` over ``module``'s trainable parameters."""
    groups = _decay_groups(module, cfg.weight_decay)
    fused = kernel_choice(module, cfg.fused)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **fused)
    if cfg.name == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"optim.name: unknown optimizer {cfg.name!r}")  # pragma: no cover


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
