"""LR and momentum schedules at points whose values are known in closed form."""

from __future__ import annotations

import math

import pytest

from mlcdist.schedules import lr_at, momentum_at


def test_cosine_without_warmup():
    assert lr_at(0, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1) == pytest.approx(0.05)
    assert lr_at(25, 100, 0.1) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(100, 100, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(500, 100, 0.1) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at min


def test_warmup_then_cosine_to_min_lr():
    base, lo = 1.0, 0.1
    assert [lr_at(t, 110, base, 10, min_lr=lo) for t in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_at(9, 110, base, 10, min_lr=lo) == pytest.approx(1.0)
    assert lr_at(10, 110, base, 10, min_lr=lo) == pytest.approx(1.0)
    # half-way through the cosine: the mean of base and min
    assert lr_at(60, 110, base, 10, min_lr=lo) == pytest.approx(0.55)
    assert lr_at(110, 110, base, 10, min_lr=lo) == pytest.approx(0.1)
    values = [lr_at(t, 110, base, 10, min_lr=lo) for t in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_with_warmup():
    assert lr_at(1, 50, 0.4, 4, kind="constant") == pytest.approx(0.2)
    assert lr_at(4, 50, 0.4, 4, kind="constant") == 0.4
    assert lr_at(49, 50, 0.4, 4, kind="constant") == 0.4


def test_momentum_schedules():
    assert momentum_at(123, 1000, 0.99) == 0.99
    assert momentum_at(0, 1000, 0.99, "cosine") == pytest.approx(0.99)
    assert momentum_at(500, 1000, 0.99, "cosine") == pytest.approx(0.995)
    assert momentum_at(1000, 1000, 0.99, "cosine") == pytest.approx(1.0)
    assert momentum_at(2000, 1000, 0.99, "cosine") == pytest.approx(1.0)
    k = 250
    assert momentum_at(k, 1000, 0.996, "cosine") == pytest.approx(
        1 - (1 - 0.996) * (math.cos(math.pi * k / 1000) + 1) / 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        lr_at(0, 10, 0.1, kind="step")
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(0, 0, 0.1)
    with pytest.raises(ValueError, match="momentum_schedule"):
        momentum_at(0, 10, 0.9, "linear")
