"""optim.py: LARS's multi-tensor update equals its per-parameter definition; fused kernels on CPU."""

from __future__ import annotations

import importlib

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


def test_kernel_choice_is_fused_on_cpu_unless_turned_off():
    from mlcdist.optim import kernel_choice

    layer = torch.nn.Linear(3, 2)
    assert kernel_choice(layer) == {"fused": True}
    assert kernel_choice(layer, fused=False) == {"foreach": True}


def _twin_models():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    twin = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    twin.load_state_dict(model.state_dict())
    return model, twin


def _groups(model, wd=0.01):
    return [{"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": wd},
            {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0, "lr": 3e-3}]


def _step_both(models, opts, lr, frozen=()):
    x = torch.randn(16, 6)
    for model, opt in zip(models, opts):
        for group in opt.param_groups[:1]:
            group["lr"] = lr  # as set_lr does every step
        loss = model(x).square().mean()
        for name in frozen:  # a parameter without a gradient this step: torch's own step
            loss = loss + 0 * dict(model.named_parameters())[name].detach().sum()
        loss.backward()
        for name, p in model.named_parameters():
            if name in frozen:
                p.grad = None
        opt.step()
        opt.zero_grad(set_to_none=True)


def _assert_identical(a: nn.Module, b: nn.Module, opt_a, opt_b) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(a.parameters(), b.parameters()):
        for key, value in opt_a.state[p].items():
            assert torch.equal(value, opt_b.state[q][key]), key


@pytest.mark.parametrize("decoupled", [False, True])
def test_lean_fused_adam_is_bit_identical_to_torch_fused_adam(decoupled):
    """Every step after the first runs the lean path; parameters and state equal torch's exactly,
    through lr changes, a step with a missing gradient and a resume from a state_dict."""
    from mlcdist.optim import adam

    model, twin = _twin_models()
    torch_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    reference = torch_cls(_groups(model), lr=1e-2, betas=(0.9, 0.99), fused=True)
    lean = adam(_groups(twin), decoupled, lr=1e-2, betas=(0.9, 0.99), fused=True)
    assert type(lean).__name__ == ("FusedAdamW" if decoupled else "FusedAdam")
    torch_steps = []  # the steps that went through torch's own (functional) fused Adam
    torch_adam = importlib.import_module("torch.optim.adam")  # the module, not the function
    functional = torch_adam._fused_adam
    for step, lr in enumerate([1e-2, 5e-3, 5e-3, 2e-3, 1e-3, 1e-3, 8e-4, 5e-4]):
        if step == 4:  # resume: a fresh optimizer loads the saved state
            state = lean.state_dict()
            lean = adam(_groups(twin), decoupled, lr=1e-2, betas=(0.9, 0.99), fused=True)
            lean.load_state_dict(state)
        frozen = ("3.bias",) if step == 2 else ()
        torch.manual_seed(100 + step)
        _step_both([model], [reference], lr, frozen)
        torch.manual_seed(100 + step)
        torch_adam._fused_adam = lambda *a, **k: (torch_steps.append(step), functional(*a, **k))[1]
        try:
            _step_both([twin], [lean], lr, frozen)
        finally:
            torch_adam._fused_adam = functional
        _assert_identical(model, twin, reference, lean)
    # torch's step ran for the first step (it creates the state), the one with a missing gradient
    # and the first after the resume (new state tensors); the lean step for all the others
    assert sorted(set(torch_steps)) == [0, 2, 4]


def test_lean_fused_adam_leaves_amp_scaling_to_torch():
    from mlcdist.optim import adam

    model, twin = _twin_models()
    reference = torch.optim.Adam(_groups(model), lr=1e-2, fused=True)
    lean = adam(_groups(twin), lr=1e-2, fused=True)
    for step in range(3):
        for opt in (reference, lean):  # what GradScaler.step sets on a fused optimizer
            opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(float(step == 1))
        torch.manual_seed(step)
        _step_both([model, twin], [reference, lean], 1e-2)
        _assert_identical(model, twin, reference, lean)


def test_lean_fused_adam_follows_swapped_parameters():
    """A wrapper that puts other tensors into the groups (DeepSpeed's flat partitions) gets
    torch's step for them, not a stale list."""
    from mlcdist.optim import adam

    model, twin = _twin_models()
    reference = torch.optim.Adam(_groups(model), lr=1e-2, fused=True)
    lean = adam(_groups(twin), lr=1e-2, fused=True)
    for step in range(4):
        if step == 2:
            for m, opt in ((model, reference), (twin, lean)):
                layer, old = m[3], m[3].weight
                layer.weight = nn.Parameter(old.detach().clone())
                opt.param_groups[0]["params"][-1] = layer.weight
                old.grad = torch.zeros_like(old)  # the replaced tensor keeps a gradient
        torch.manual_seed(step)
        _step_both([model, twin], [reference, lean], 1e-2)
        _assert_identical(model, twin, reference, lean)
