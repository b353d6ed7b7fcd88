"""optim.py: LARS's multi-tensor update equals its per-parameter definition; fused kernels on CPU."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("name,torch_class", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_lean_fused_step_equals_torchs_fused_step_bit_for_bit(name, torch_class, monkeypatch):
    """LeanAdam(W) (optim.py) calls torch's fused kernels itself after the first step: the same
    parameters and state, to the bit, over steps with a changing lr, and through a state_dict."""
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 3))

    cfg = OptimConfig(name=name, lr=3e-3, weight_decay=1e-2)
    ours_net, ref_net = net(), net()
    ours = build_optimizer(cfg, ours_net)
    assert type(ours).__name__ == f"Lean{torch_class.__name__}"
    ref = torch_class([{"params": [p for p in ref_net.parameters() if p.ndim > 1], "weight_decay": 1e-2},
                       {"params": [p for p in ref_net.parameters() if p.ndim <= 1], "weight_decay": 0.0}],
                      lr=3e-3, fused=True)
    torch_steps = []
    original = torch_class.step
    monkeypatch.setattr(torch_class, "step", lambda self, closure=None: torch_steps.append(self) or
                        original(self, closure))
    x = torch.randn(32, 7)
    for k in range(6):
        for model, opt in ((ours_net, ours), (ref_net, ref)):
            for group in opt.param_groups:
                group["lr"] = 3e-3 * (0.5 + 0.1 * k)
            opt.zero_grad(set_to_none=True)
            model(x + k).square().mean().backward()
            opt.step()
        for a, b in zip(ours_net.parameters(), ref_net.parameters()):
            assert torch.equal(a, b), k
    assert torch_steps.count(ours) == 1  # torch's step only once, to create the state
    moved = build_optimizer(cfg, ours_net)
    moved.load_state_dict(ref.state_dict())
    pairs = [(p, q) for g, h in zip(moved.param_groups, ref.param_groups) for p, q in zip(g["params"], h["params"])]
    assert len(pairs) == 4
    for p, q in pairs:
        assert torch.equal(moved.state[p]["exp_avg"], ref.state[q]["exp_avg"])
        assert torch.equal(moved.state[p]["step"], ref.state[q]["step"])


def test_lean_step_falls_back_to_torch_when_it_cannot_match_it():
    model = nn.Linear(4, 2)
    opt = build_optimizer(OptimConfig(name="adam", lr=0.1), model)
    model(torch.randn(3, 4)).sum().backward()
    assert opt._lean_lists() is None  # no state yet: torch's step creates it
    opt.step()
    assert opt._lean_lists() is not None
    opt.param_groups[0]["lr"] = torch.tensor(0.1)  # a tensor lr: torch's step handles it
    assert opt._lean_lists() is None
