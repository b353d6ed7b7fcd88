"""The linear probe stays stable whatever the feature scale, and says when its loss diverges."""

from __future__ import annotations

import math

import torch

from mlcdist.config import EvalConfig
from mlcdist.eval.features import FeatureSet
from mlcdist.eval.probe import divergence_warning, train_linear_probe


def features(n: int, seed: int, scale: float = 1.0, offset: float = 0.0) -> FeatureSet:
    """Linearly separable-ish multi-label data: 3 classes from the signs of 3 feature mixes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    mix = torch.randn(16, 3, generator=torch.Generator().manual_seed(99))
    y = (x @ mix + 0.3 * torch.randn(n, 3, generator=g) > 0).float()
    return FeatureSet(x * scale + offset, y, torch.arange(n))


def probe(scale: float, offset: float, **cfg):
    sets = [features(n, seed, scale, offset) for n, seed in ((200, 0), (60, 1), (80, 2))]
    return train_linear_probe(*sets, EvalConfig(epochs=15, batch_size=50, **cfg), torch.device("cpu"))


def test_standardised_probe_ignores_the_feature_scale_and_its_head_acts_on_raw_features():
    plain = probe(1.0, 0.0)
    huge = probe(1e4, 300.0)  # a random encoder's features can be this far from unit scale
    torch.testing.assert_close(huge.test_scores, plain.test_scores, atol=2e-4, rtol=0)
    assert huge.warnings == [] and plain.selected_epoch == huge.selected_epoch
    raw = features(80, 2, 1e4, 300.0).features.double()
    head = {k: v.double() for k, v in huge.head_state.items()}  # linear_head.pt: raw features in
    torch.testing.assert_close(torch.sigmoid(raw @ head["weight"].T + head["bias"]).float(), huge.test_scores,
                               atol=1e-4, rtol=0)


def test_unstandardised_probe_on_huge_features_warns_that_it_diverges():
    logs: list[str] = []
    sets = [features(n, seed, 1e4, 300.0) for n, seed in ((200, 0), (60, 1), (80, 2))]
    result = train_linear_probe(*sets, EvalConfig(epochs=15, batch_size=50, standardize=False, lr=1.0),
                                torch.device("cpu"), logs.append)
    (warning,) = result.warnings
    assert "diverged" in warning and "lower eval.lr or set eval.standardize=true" in warning
    assert any("warning:" in line and "diverged" in line for line in logs)


def test_divergence_warning_rules():
    def history(*losses):
        return [{"epoch": i + 1, "train_loss": v} for i, v in enumerate(losses)]

    def warn(*losses):
        return divergence_warning(history(*losses), "probe", "lower eval.lr")

    assert warn(0.6, 0.5, 0.4, 0.41) is None and warn(0.6) is None  # noise is no divergence
    rose = warn(0.6, 0.3, 0.6)  # 2x its lowest
    assert "lowest 0.3 at epoch 2" in rose and "last 0.6 at epoch 3" in rose and rose.endswith("lower eval.lr")
    assert warn(0.6, 0.65, 0.62)  # above its first epoch
    assert warn(4000.0, 800.0, 90.0)  # falling, but worse than predicting 0.5 everywhere
    assert "nan" in warn(0.6, math.nan)
