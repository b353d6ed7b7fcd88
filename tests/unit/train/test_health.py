"""first_non_finite (train/health.py): the multi-tensor norm finds every NaN/inf entry, names the
first tensor in state order, and never calls a finite tensor non-finite when its norm overflows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlcdist.train.health import first_non_finite


def model(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).to(dtype)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["0.weight", "1.running_var", "2.bias"])
def test_a_single_bad_entry_is_named(bad, where):
    net = model()
    dict(list(net.named_parameters()) + list(net.named_buffers()))[where].data.view(-1)[-1] = bad
    assert first_non_finite({"query": model(), "key": net}) == f"key.{where}"


def test_the_first_bad_tensor_in_state_order_is_named():
    net = model()
    net[2].weight.data[0, 0] = float("nan")
    net[0].bias.data[1] = float("inf")
    assert first_non_finite({"query": net}) == "query.0.bias"  # parameters in module order


@pytest.mark.parametrize("dtype,big", [(torch.float16, 6e4), (torch.float32, 1e30)])
def test_finite_values_whose_norm_overflows_pass(dtype, big):
    net = model(dtype)
    net[0].weight.data.fill_(big)  # the norm is inf in this dtype, every entry is finite
    assert not torch.isfinite(torch._foreach_norm([net[0].weight.detach()])[0])
    assert first_non_finite({"query": net}) is None
    net[0].weight.data[0, 0] = float("nan")
    assert first_non_finite({"query": net}) == "query.0.weight"


def test_a_clean_model_passes():
    assert first_non_finite({"query": model(), "key": model(torch.bfloat16)}) is None
