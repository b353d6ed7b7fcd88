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


class _LeanFusedStep:
    """torch's fused Adam / AdamW step without its per-step Python bookkeeping.

    ``torch.optim.Adam(fused=True).step`` rebuilds six per-parameter lists, looks up every
    parameter's state and regroups the tensors by device and dtype on every call: ~0.4 ms a
    step for yeast's 11 tensors, 7-10% of a vector step. Once every parameter has its state,
    this step keeps those lists and runs exactly torch's two calls per group::

        _foreach_add_(steps, 1);  _fused_adam_(params, grads, m, v, [], steps, lr=..., ...)

    so parameters and state are bit-identical to torch's (``tests/unit/test_optim.py``).
    Anything else (a closure, a missing gradient, AMP's ``grad_scale``/``found_inf``, amsgrad,
    maximize, capturable, the first step that creates the state) takes torch's own step.
    """

    _lean: list | None = None

    @torch.no_grad()
    def step(self, closure=None):
        if (closure is None and self._lean is not None and self._same_parameters()
                and getattr(self, "grad_scale", None) is None and getattr(self, "found_inf", None) is None):
            grads = [[p.grad for p in params] for _, params, *_ in self._lean]
            if all(g is not None for group in grads for g in group):
                for (group, params, exp_avgs, exp_avg_sqs, steps), group_grads in zip(self._lean, grads):
                    kernel = torch._fused_adamw_ if group.get("decoupled_weight_decay", self._decoupled) \
                        else torch._fused_adam_
                    beta1, beta2 = group["betas"]
                    torch._foreach_add_(steps, 1)
                    kernel(params, group_grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                           lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                           eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)
                return None
        loss = super().step(closure)
        self._lean = self._lean_lists()
        return loss

    def _lean_lists(self) -> list | None:
        """Per group (group, params, exp_avgs, exp_avg_sqs, steps) when the lean step applies."""
        lean = []
        for group in self.param_groups:
            params = list(group["params"])
            if (not group.get("fused") or group["amsgrad"] or group["maximize"] or group["capturable"]
                    or group["differentiable"] or isinstance(group["lr"], Tensor)
                    or any(p.is_complex() or "step" not in self.state[p] for p in params)):
                return None
            states = [self.state[p] for p in params]
            lean.append((group, params, [s["exp_avg"] for s in states],
                         [s["exp_avg_sq"] for s in states], [s["step"] for s in states]))
        return lean

    def _same_parameters(self) -> bool:
        """The groups still hold the tensors the lists were built from (DeepSpeed, for one,
        swaps in its own flat partitions)."""
        return len(self._lean) == len(self.param_groups) and all(
            len(group["params"]) == len(params) and all(a is b for a, b in zip(group["params"], params))
            for group, (_, params, *_) in zip(self.param_groups, self._lean))

    def load_state_dict(self, state_dict: dict) -> None:
        self._lean = None  # the state tensors are replaced
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict) -> None:
        self._lean = None
        super().add_param_group(param_group)


class FusedAdam(_LeanFusedStep, torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` with :class:`_LeanFusedStep`'s step."""

    _decoupled = False


class FusedAdamW(_LeanFusedStep, torch.optim.AdamW):
    """``torch.optim.AdamW(fused=True)`` with :class:`_LeanFusedStep`'s step."""

    _decoupled = True


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


def adam(params, decoupled_weight_decay: bool = False, **kwargs) -> torch.optim.Optimizer:
    """Adam (or AdamW), with the lean step of :class:`FusedAdam` when ``kwargs`` ask for fused."""
    if kwargs.get("fused"):
        return (FusedAdamW if decoupled_weight_decay else FusedAdam)(params, **kwargs)
    return (torch.optim.AdamW if decoupled_weight_decay else torch.optim.Adam)(params, **kwargs)


def build_optimizer(cfg: OptimConfig, module: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg`` over ``module``'s trainable parameters."""
    groups = _decay_groups(module, cfg.weight_decay)
    fused = kernel_choice(module, cfg.fused)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
    if cfg.name in ("adam", "adamw"):
        return adam(groups, cfg.name == "adamw", lr=cfg.lr, betas=cfg.betas, **fused)
    if cfg.name == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"optim.name: unknown optimizer {cfg.name!r}")  # pragma: no cover


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
