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
            if not params:
                continue
            grads = [p.grad for p in params]
            scaled = [p.ndim > 1 for p in params]
            wd = group["weight_decay"]
            updates = [g.add(p, alpha=wd) if s else g.clone() for p, g, s in zip(params, grads, scaled)]
            w_norm = torch._foreach_norm(params)
            u_norm = torch._foreach_norm(updates)
            for u, wn, un, s in zip(updates, w_norm, u_norm, scaled):
                if s:  # trust ratio stays on device: no host sync
                    ratio = torch.where((wn > 0) & (un > 0), group["trust_coefficient"] * wn / un,
                                        torch.ones_like(wn))
                    u.mul_(ratio)
            bufs = []
            for p, u in zip(params, updates):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = u.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(u)
                bufs.append(state["momentum_buffer"])
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


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


def build_optimizer(cfg: OptimConfig, module: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg`` over ``module``'s trainable parameters."""
    groups = _decay_groups(module, cfg.weight_decay)
    fused = {"fused": True} if cfg.fused and _fusable(module) else {"foreach": True}
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
