"""optim.py: LARS's multi-tensor update equals its per-parameter definition; fused kernels on CPU."""

from __future__ import annotations

import torch
from torch import nn

from mlcdist.config import OptimConfig
from mlcdist.optim import LARS, build_optimizer


def lars_reference(params, grads, bufs, lr, momentum, wd, eta):
    """The update rule written per parameter in float64 (You et al. 2017; plain SGD for 1-d)."""
    out_params, out_bufs = [], []
    for p, g, buf in zip(params, grads, bufs):
        p, g = p.double(), g.double()
        u = g + wd * p if p.ndim > 1 else g.clone()
        if p.ndim > 1 and p.norm() > 0 and u.norm() > 0:
            u = u * (eta * p.norm() / u.norm())
        buf = u if buf is None else momentum * buf + u
        out_params.append(p - lr * buf)
        out_bufs.append(buf)
    return out_params, out_bufs


def test_lars_matches_the_per_parameter_rule_over_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    with torch.no_grad():
        model[2].weight.zero_()  # a zero-norm matrix takes the plain SGD step (ratio 1)
    opt = LARS(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=0.02)
    ref = [p.detach().double().clone() for p in model.parameters()]
    bufs = [None] * len(ref)
    for _ in range(3):
        model(torch.randn(8, 6)).square().mean().backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        opt.step()
        opt.zero_grad()
        ref, bufs = lars_reference(ref, grads, bufs, 0.5, 0.9, 0.01, 0.02)
    for p, r in zip(model.parameters(), ref):
        torch.testing.assert_close(p.detach().double(), r, rtol=1e-5, atol=1e-6)


def test_cpu_optimizers_use_fused_kernels_unless_switched_off():
    model = nn.Linear(4, 2)
    for name in ("sgd", "adam", "adamw"):
        assert build_optimizer(OptimConfig(name=name, lr=0.1), model).defaults["fused"] is True
        plain = build_optimizer(OptimConfig(name=name, lr=0.1, fused=False), model)
        assert not plain.defaults.get("fused") and plain.defaults["foreach"] is True


def test_kernel_choice_is_fused_on_cpu_unless_turned_off():
    from mlcdist.optim import kernel_choice

    layer = torch.nn.Linear(3, 2)
    assert kernel_choice(layer) == {"fused": True}
    assert kernel_choice(layer, fused=False) == {"foreach": True}
