"""train.objective on one process: the trainer's loss path for every kind, against the registry.

In-batch (``loss.candidates: batch``) the step loss equals ``STUDY_LOSSES[kind]`` on the query's
features (and prototypes); the supervised kinds equal theirs on the logits; the MoCo path runs the
queue's valid mask and returns keys to enqueue. The multi-process equality is tests/e2e/test_distributed_study.py.
"""

from __future__ import annotations

import pytest
import torch

from mlcdist.config import LossConfig, ModelConfig
from mlcdist.losses import STUDY_LOSSES
from mlcdist.models import build_model
from mlcdist.queue import LabelledKeyQueue
from mlcdist.train.objective import contrastive_loss, supervised_loss

CLASSES, DIM = 4, 6
MODEL = ModelConfig(arch="mlp", mlp_dims=[8], dropout=0.0, head_dims=[8, 5], head_bn=False)


def batch(seed=0, b=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, DIM, generator=g)
    y = (torch.rand(b, CLASSES, generator=g) < 0.5).float()
    y[0] = 0
    return (x, x + 0.1 * torch.randn(b, DIM, generator=g)), y


@pytest.mark.parametrize("kind", ["mulsupcon", "jaccard", "proto", "msc", "reg", "reg_plain"])
def test_in_batch_step_equals_the_registry(kind):
    cfg = LossConfig(kind=kind, candidates="batch", temperature=0.3, alpha=0.5 if kind in ("msc", "reg") else None)
    torch.manual_seed(0)
    model = build_model(MODEL, num_classes=CLASSES, in_dim=DIM, prototypes=cfg.prototypes)
    views, y = batch()
    out = contrastive_loss(model.query, model.key, None, views, y, cfg, shuffle_seed=0)
    assert out.keys is None  # in-batch: nothing to enqueue
    extra = {"alpha": 0.5} if kind in ("msc", "reg") else {}
    args = (model.query(views[0]), y) + ((model.query.prototypes.weight,) if cfg.prototypes else ())
    want = STUDY_LOSSES[kind](*args, temperature=0.3, **extra)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    params = [p for p in model.query.parameters()]
    got_g = torch.autograd.grad(out.loss, params)
    want_g = torch.autograd.grad(want, params)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["jaccard", "msc", "reg", "proto", "mulsupcon"])
def test_moco_step_uses_keys_and_the_valid_queue(kind):
    cfg = LossConfig(kind=kind, temperature=0.3)
    torch.manual_seed(0)
    model = build_model(MODEL, num_classes=CLASSES, in_dim=DIM, prototypes=cfg.prototypes)
    queue = LabelledKeyQueue(10, 5, CLASSES)
    views, y = batch()
    first = contrastive_loss(model.query, model.key, queue, views, y, cfg, shuffle_seed=0)
    assert first.loss.isfinite() and int(first.num_candidates) == 7  # empty queue: own keys only
    queue.enqueue_(first.keys, first.key_labels)
    second = contrastive_loss(model.query, model.key, queue, views, y, cfg, shuffle_seed=0)
    assert int(second.num_candidates) == 14
    second.loss.backward()
    if cfg.prototypes:
        assert model.query.prototypes.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["bce", "asl", "zlpr"])
def test_supervised_baselines_equal_the_registry(kind):
    cfg = LossConfig(kind=kind, gamma_neg=2.0, clip=0.05)
    torch.manual_seed(0)
    model = build_model(MODEL, num_classes=CLASSES, in_dim=DIM, kind="supervised")
    views, y = batch()
    out = supervised_loss(model, views, y, cfg)
    extra = dict(gamma_neg=2.0, gamma_pos=0.0, clip=0.05, eps=1e-5) if kind == "asl" else {}
    torch.testing.assert_close(out.loss, STUDY_LOSSES[kind](model(views[0]), y, **extra))
