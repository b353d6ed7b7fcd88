r"""One training step's loss: multi-label contrast over the global batch (and queue), or a supervised baseline.

MoCo setting (``loss.candidates: moco``). Every rank contrasts its own anchors against the same
candidate set

.. math::  \mathcal{A} = [\,k^{(\text{rank }0)}; \dots; k^{(\text{rank }W-1)};\ \text{queue}\,]

(the anchors' own keys sit at their global positions). In-batch setting (``batch``, the study's):
one view, the candidates are the global batch's query features, gathered with gradient, each anchor's
own feature excluded.

Every loss comes as a rank's numerator :math:`N_r` and normaliser :math:`S_r` plus terms that are
identical on every rank (``reg``'s prototype anchors: :math:`N_0, S_0`), normalised by
:math:`S = \sum_r S_r + S_0`. Each rank returns :math:`(W N_r + N_0) / S` so that after the backend
averages gradients over the :math:`W` ranks the gradient is :math:`\nabla (\sum_r N_r + N_0) / S`,
exactly that of one process running the whole global batch.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from mlcdist.config import LossConfig
from mlcdist.losses import POSITIVES, STUDY_LOSSES, multilabel_supcon_terms
from mlcdist.losses.study_terms import StudyTerms, study_terms
from mlcdist.parallel.collectives import (all_gather_rows, all_gather_with_grad, all_reduce_sum,
                                          shuffled_keys, world)


class StepLoss(NamedTuple):
    loss: Tensor  # what to back-propagate on this rank
    value: Tensor  # the global loss, detached (for logging; reading it is a host sync)
    anchors: Optional[Tensor] = None  # this rank's query embeddings B x D, detached (collapse guard)
    num_candidates: Optional[Tensor] = None  # 0-d count of valid candidates (keys + filled queue)
    keys: Optional[Tensor] = None  # the global batch's keys, N x D (the caller enqueues them); None in-batch
    key_labels: Optional[Tensor] = None  # their multi-hot labels, N x C bool


def _encode(query: nn.Module, x: Tensor, cfg: LossConfig) -> tuple[Tensor, Optional[Tensor]]:
    """Query embeddings and, for the prototype losses, the (unit) label prototypes."""
    if cfg.prototypes:
        return query(x, with_prototypes=True)
    return query(x), None


def _terms(cfg: LossConfig, anchors: Tensor, labels: Tensor, candidates: Tensor, candidate_labels: Tensor,
           prototypes: Optional[Tensor], valid: Optional[Tensor], self_index: Optional[Tensor]) -> StudyTerms:
    if cfg.kind in POSITIVES and self_index is None:  # MulSupCon family, MoCo setting
        num, norm = multilabel_supcon_terms(anchors, candidates, labels, candidate_labels,
                                            cfg.temperature, cfg.kind, valid)
        zero = num.new_zeros(())
        return StudyTerms(num, norm, zero, zero)
    return study_terms(cfg.kind, anchors, labels, candidates, candidate_labels, prototypes,
                       temperature=cfg.temperature, valid=valid, self_index=self_index,
                       alpha=cfg.alpha, beta=cfg.beta)


def _global(terms: StudyTerms) -> tuple[Tensor, Tensor]:
    """(this rank's loss to back-propagate, the global loss detached); see the module docstring."""
    _, size = world()
    normaliser = (all_reduce_sum(terms.normaliser) + terms.shared_normaliser.detach()).clamp_min(1.0)
    loss = (terms.numerator * size + terms.shared_numerator) / normaliser
    value = (all_reduce_sum(terms.numerator.detach()) + terms.shared_numerator.detach()) / normaliser
    return loss, value


def contrastive_loss(query: nn.Module, key: nn.Module, queue, views: tuple[Tensor, Tensor],
                     labels: Tensor, cfg: LossConfig, *, shuffle_seed: int,
                     shuffle_bn: bool = True) -> StepLoss:
    """Loss of one micro-batch against the global keys and ``queue``'s candidates (read only:
    the caller enqueues ``StepLoss.keys`` / ``key_labels`` after the step), or in-batch."""
    if cfg.candidates == "batch":
        return in_batch_loss(query, views[0], labels, cfg)
    anchors, prototypes = _encode(query, views[0], cfg)  # B x D, L2-normalised
    with torch.no_grad():
        if shuffle_bn:
            keys = shuffled_keys(key, views[1], shuffle_seed)
        else:
            keys = all_gather_rows(key(views[1]))
        keys = keys.float()
        key_labels = all_gather_rows(labels.to(torch.bool))
        q_keys, q_labels, q_valid = queue.candidates()
        candidates = torch.cat([keys, q_keys.to(keys.dtype)])
        candidate_labels = torch.cat([key_labels, q_labels.to(torch.bool)])
        valid = torch.cat([torch.ones(keys.shape[0], dtype=torch.bool, device=keys.device), q_valid])
    terms = _terms(cfg, anchors, labels, candidates, candidate_labels, prototypes, valid, None)
    loss, value = _global(terms)
    return StepLoss(loss, value, anchors.detach(), valid.sum(), keys, key_labels)


def in_batch_loss(query: nn.Module, x: Tensor, labels: Tensor, cfg: LossConfig) -> StepLoss:
    """The study's setting: one view, the global batch as candidates (gathered with gradient), self
    excluded; no key encoder, no queue."""
    rank, _ = world()
    features, prototypes = _encode(query, x, cfg)
    candidates = all_gather_with_grad(features)
    candidate_labels = all_gather_rows(labels.to(torch.bool))
    self_index = rank * features.shape[0] + torch.arange(features.shape[0], device=features.device)
    terms = _terms(cfg, features, labels, candidates, candidate_labels, prototypes, None, self_index)
    loss, value = _global(terms)
    num_candidates = torch.tensor(candidates.shape[0] - 1, device=features.device)
    return StepLoss(loss, value, features.detach(), num_candidates)


def supervised_loss(model: nn.Module, views: tuple[Tensor, Tensor], labels: Tensor,
                    cfg: Optional[LossConfig] = None) -> StepLoss:
    """A supervised baseline on the first augmented view: the paper's BCE, or the study's ASL / ZLPR
    (means over the local batch; equal batches, so the backend's average is the global mean)."""
    kind = "bce" if cfg is None else cfg.kind
    hyper = {}
    if kind == "asl":
        hyper = dict(gamma_neg=cfg.gamma_neg, gamma_pos=cfg.gamma_pos, clip=cfg.clip, eps=cfg.eps)
    loss = STUDY_LOSSES[kind](model(views[0]), labels, **hyper)
    _, size = world()
    return StepLoss(loss, all_reduce_sum(loss.detach()) / size)
