r"""One training step's loss: MoCo-style multi-label contrast over the global batch and queue.

Every rank contrasts its own anchors against the same candidate set

.. math::  \mathcal{A} = [\,k^{(\text{rank }0)}; \dots; k^{(\text{rank }W-1)};\ \text{queue}\,]

(the anchors' own keys sit at their global positions), and the loss is normalised by the
global label count :math:`S = \sum_r S_r`. Each rank returns :math:`W \cdot N_r / S` so that
after the backend averages gradients over the :math:`W` ranks the gradient is
:math:`\nabla \sum_r N_r / S`, exactly that of one process running the whole global batch.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from mlcdist.config import LossConfig
from mlcdist.losses import bce_with_logits, multilabel_supcon_terms
from mlcdist.parallel.collectives import all_gather_rows, all_reduce_sum, shuffled_keys, world


class StepLoss(NamedTuple):
    loss: Tensor  # what to back-propagate on this rank
    value: Tensor  # the global loss, detached (for logging; reading it is a host sync)
    anchors: Optional[Tensor] = None  # this rank's query embeddings B x D, detached (collapse guard)
    num_candidates: Optional[Tensor] = None  # 0-d count of valid candidates (keys + filled queue)
    keys: Optional[Tensor] = None  # the global batch's keys, N x D (the caller enqueues them)
    key_labels: Optional[Tensor] = None  # their multi-hot labels, N x C bool


def contrastive_loss(query: nn.Module, key: nn.Module, queue, views: tuple[Tensor, Tensor],
                     labels: Tensor, cfg: LossConfig, *, shuffle_seed: int,
                     shuffle_bn: bool = True) -> StepLoss:
    """Loss of one micro-batch against the global keys and ``queue``'s candidates (read only:
    the caller enqueues ``StepLoss.keys`` / ``key_labels`` after the step)."""
    _, size = world()
    anchors = query(views[0])  # B x D, L2-normalised
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
    terms = multilabel_supcon_terms(anchors, candidates, labels, candidate_labels,
                                    cfg.temperature, cfg.kind, valid)
    normaliser = all_reduce_sum(terms.normaliser).clamp_min(1.0)
    loss = terms.numerator * size / normaliser
    value = all_reduce_sum(terms.numerator.detach()) / normaliser
    return StepLoss(loss, value, anchors.detach(), valid.sum(), keys, key_labels)


def supervised_loss(model: nn.Module, views: tuple[Tensor, Tensor], labels: Tensor) -> StepLoss:
    """The paper's BCE baseline on the first augmented view (the backend averages over ranks)."""
    loss = bce_with_logits(model(views[0]), labels)
    _, size = world()
    return StepLoss(loss, all_reduce_sum(loss.detach()) / size)
