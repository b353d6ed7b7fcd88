"""mlcdist.models.dropout.Dropout: nn.Dropout's distribution, gradient and modes, a cheaper CPU mask."""

import math

import pytest
import torch
from torch import nn

from mlcdist.config import ModelConfig
from mlcdist.models import build_backbone
from mlcdist.models.dropout import Dropout


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_keeps_each_entry_with_probability_one_minus_p_and_scales_the_kept(p):
    torch.manual_seed(0)
    n = 400_000
    y = Dropout(p)(torch.ones(n))
    kept = y != 0
    assert torch.equal(y[kept], torch.full_like(y[kept], 1.0 / (1.0 - p)))
    # binomial standard error of the kept share; 5 of them is a one-in-a-million miss
    se = math.sqrt(p * (1 - p) / n)
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * se
    assert abs(y.mean().item() - 1.0) < 5 * se / (1 - p)  # unbiased, as nn.Dropout


def test_masks_are_independent_across_entries_and_calls():
    torch.manual_seed(1)
    a, b = (Dropout(0.5)(torch.ones(200_000)) != 0 for _ in range(2))
    both = (a & b).float().mean().item()
    assert abs(both - 0.25) < 0.005  # independent calls
    neighbours = (a[:-1] & a[1:]).float().mean().item()
    assert abs(neighbours - 0.25) < 0.005  # independent entries


def test_the_global_seed_decides_the_mask():
    x = torch.randn(32, 512)
    torch.manual_seed(3)
    first = Dropout(0.2)(x)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.2)(x), first)
    assert not torch.equal(Dropout(0.2)(x), first)


def test_gradient_is_the_mask_over_keep():
    torch.manual_seed(4)
    x = torch.randn(16, 64, requires_grad=True)
    y = Dropout(0.3)(x)
    y.sum().backward()
    scale = (y.detach() / x.detach()).nan_to_num()
    assert torch.allclose(x.grad, scale, atol=1e-6)
    values = torch.unique(x.grad)
    assert len(values) == 2 and values[0] == 0 and abs(values[1].item() - 1 / 0.7) < 1e-6


def test_eval_mode_p0_and_inplace_behave_as_nn_dropout():
    x = torch.randn(8, 8)
    drop = Dropout(0.5).eval()
    assert drop(x) is x or torch.equal(drop(x), x)
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
    torch.manual_seed(5)
    expected = nn.Dropout(0.5, inplace=True)(x.clone())
    torch.manual_seed(5)
    assert torch.equal(Dropout(0.5, inplace=True)(x.clone()), expected)  # the inplace path is nn.Dropout's
    assert isinstance(Dropout(0.1), nn.Dropout) and Dropout(0.1).state_dict() == {}


def test_bfloat16_input_keeps_its_dtype_and_the_keep_rate():
    torch.manual_seed(6)
    y = Dropout(0.2)(torch.ones(200_000, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert abs((y != 0).float().mean().item() - 0.8) < 0.005  # float32 draws, not bf16's 8 bits


def test_the_vector_mlp_uses_it():
    backbone, _ = build_backbone(ModelConfig(arch="mlp", mlp_dims=[16, 8], dropout=0.2), in_dim=5)
    drops = [m for m in backbone.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(isinstance(m, Dropout) and m.p == 0.2 for m in drops)
