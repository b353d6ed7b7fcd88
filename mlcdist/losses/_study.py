"""Shared pieces of the study's in-batch losses (dtype, normalisation, self-excluded softmax).

EPS is the study's constant (1e-8, every file of its code); it enters each loss exactly where the
study's code adds it, so values match the study's definition, not an approximation of it.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8
LossFn = TypeVar("LossFn", bound=Callable[..., Tensor])


def full_precision(loss: LossFn) -> LossFn:
    """Run ``loss`` with autocast off: inside a bf16/fp16 region the study's losses still compute in
    :func:`compute_dtype` of their first tensor, so their values do not depend on the region."""

    @functools.wraps(loss)
    def run(first: Tensor, *args, **kwargs) -> Tensor:
        with torch.autocast(device_type=first.device.type, enabled=False):
            return loss(first, *args, **kwargs)

    return run  # type: ignore[return-value]


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """The tensor's float dtype, or float32 if it is lower (fp16/bf16 inputs are upcast)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def unit_rows(x: Tensor, dtype: torch.dtype) -> Tensor:
    r""":math:`z_i = x_i / \max(\lVert x_i \rVert, 10^{-12})` in ``dtype`` (as ``F.normalize``)."""
    return F.normalize(x.to(dtype), dim=1, eps=1e-12)


def in_batch_scores(features: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    r"""(S, Y): :math:`S_{ab} = z_a \cdot z_b / \tau` (B x B) and the labels (B x C), both in
    :func:`compute_dtype` of ``features``."""
    dtype = compute_dtype(features)
    z = unit_rows(features, dtype)
    return (z @ z.T) / temperature, labels.to(dtype)


def prototype_inputs(name: str, features: Tensor, labels: Tensor,
                     prototypes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(z, p, Y): unit features B x D, unit prototypes C x D and labels B x C, checked, in
    :func:`compute_dtype` of ``features``."""
    check_prototypes(name, features, labels, prototypes)
    dtype = compute_dtype(features)
    return unit_rows(features, dtype), unit_rows(prototypes, dtype), labels.to(dtype)


def check_pair(name: str, features: Tensor, labels: Tensor) -> None:
    if features.dim() != 2 or labels.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: features {tuple(features.shape)} and labels "
                         f"{tuple(labels.shape)} must be B x D and B x C")


def check_prototypes(name: str, features: Tensor, labels: Tensor, prototypes: Tensor) -> None:
    check_pair(name, features, labels)
    if prototypes.shape != (labels.shape[1], features.shape[1]):
        raise ValueError(f"{name}: prototypes {tuple(prototypes.shape)} must be C x D = "
                         f"{labels.shape[1]} x {features.shape[1]}")


def self_excluded_lse(scores: Tensor) -> Tensor:
    r""":math:`\mathrm{lse}_a = \log \sum_{b \neq a} e^{S_{ab}}` for a square N x N ``scores``.

    A row with no other candidate (N = 1) gives 0 instead of -inf, so that a zero weight times
    it stays 0 (the study's code would give NaN there).
    """
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    lse = torch.logsumexp(scores.masked_fill(eye, float("-inf")), dim=1)
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def off_diagonal(n: int, like: Tensor) -> Tensor:
    """``1 - I`` (n x n) in ``like``'s dtype and device."""
    return 1.0 - torch.eye(n, dtype=like.dtype, device=like.device)


def weighted_log_prob_sum(weights: Tensor, scores: Tensor, lse: Tensor) -> Tensor:
    r""":math:`\sum_{a,b} w_{ab} (S_{ab} - \mathrm{lse}_a)` without forming log p (w_aa must be 0)."""
    return (weights * scores).sum() - (weights.sum(1) * lse).sum()
