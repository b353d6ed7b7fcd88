r"""The labelled key queue: MoCo keys with their multi-hot labels, a validity mask and a pointer.

A ring buffer of ``size`` slots. Slot ``s`` holds a key :math:`z_k \in \mathbb{R}^D`, its
label set as a compact row of ``C`` booleans, and ``valid[s]`` (was it ever written). An
enqueue of ``n`` keys writes them, oldest first, at

.. math::  \text{slot}(i) = (\text{ptr} + i) \bmod \text{size}, \quad i = 0, \dots, n-1

and advances :math:`\text{ptr} \leftarrow (\text{ptr} + n) \bmod \text{size}`; when
:math:`n > \text{size}` only the newest ``size`` keys can survive, so only they are written
(at the slots the sequential rule would leave them in). Key and label rows are written by the
same index, so they stay aligned across any wrap-around. ``ptr`` is a 0-dim device tensor
and nothing here reads a value back to the host, so the step never synchronises.

In distributed runs every rank enqueues the same gathered global batch (the caller gathers),
so every rank holds the same queue. ``size == 0`` disables the queue: no candidates.
"""

from __future__ import annotations

import torch
from torch import Tensor

_STATE_KEYS = ("keys", "labels", "valid", "ptr")


class LabelledKeyQueue:
    """``keys`` (size x dim), ``labels`` (size x C, bool or uint8), ``valid`` (size), ``ptr`` ()."""

    def __init__(self, size: int, dim: int, num_classes: int, device: torch.device | str = "cpu", *,
                 dtype: torch.dtype = torch.float32, label_dtype: torch.dtype = torch.bool):
        if size < 0 or dim <= 0 or num_classes <= 0:
            raise ValueError("LabelledKeyQueue: need size >= 0 (queue.size), dim > 0 and "
                             "num_classes > 0; "
                             f"got size={size}, dim={dim}, num_classes={num_classes}")
        if label_dtype not in (torch.bool, torch.uint8):
            raise ValueError("LabelledKeyQueue: label_dtype must be torch.bool or torch.uint8, "
                             f"got {label_dtype}")
        self.size, self.dim, self.num_classes = size, dim, num_classes
        self.keys = torch.zeros(size, dim, dtype=dtype, device=device)
        self.labels = torch.zeros(size, num_classes, dtype=label_dtype, device=device)
        self.valid = torch.zeros(size, dtype=torch.bool, device=device)
        self.ptr = torch.zeros((), dtype=torch.long, device=device)

    def candidates(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(keys, labels, valid)`` for the caller to append after the batch's own keys.

        These are the live buffers, not copies: consume them (``torch.cat`` does) before the
        next :meth:`enqueue_`, which overwrites them in place.
        """
        return self.keys, self.labels, self.valid

    @torch.no_grad()
    def enqueue_(self, keys: Tensor, labels: Tensor) -> None:
        """Write ``keys`` (n x dim) and their multi-hot ``labels`` (n x C) at the pointer."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"enqueue_: keys must be (n, {self.dim}), got {tuple(keys.shape)}")
        if labels.shape != (keys.shape[0], self.num_classes):
            raise ValueError(f"enqueue_: labels must be ({keys.shape[0]}, {self.num_classes}), "
                             f"got {tuple(labels.shape)}")
        n = keys.shape[0]
        if self.size == 0 or n == 0:
            return
        kept = min(n, self.size)  # shapes are host ints: no sync
        offsets = torch.arange(n - kept, n, device=self.ptr.device)
        slots = (self.ptr + offsets) % self.size  # distinct, since kept <= size
        # index_copy_/index_fill_ take device indices: no host round trip, unlike masks.
        new_keys = keys[n - kept:].detach().to(self.keys.device, self.keys.dtype)
        new_labels = (labels[n - kept:] != 0).to(self.labels.device, self.labels.dtype)
        self.keys.index_copy_(0, slots, new_keys)
        self.labels.index_copy_(0, slots, new_labels)
        self.valid.index_fill_(0, slots, True)
        self.ptr.add_(n).remainder_(self.size)

    def fill_fraction(self) -> Tensor:
        """Fraction of slots ever written, as a 0-dim float tensor (reading it syncs)."""
        if self.size == 0:
            return torch.zeros((), device=self.valid.device)
        return self.valid.float().mean()

    def state_dict(self) -> dict[str, Tensor]:
        """CPU copies of the four tensors (tensors only: ``weights_only``-loadable)."""
        return {name: getattr(self, name).detach().to("cpu", copy=True) for name in _STATE_KEYS}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"queue state: missing {missing}; expected keys {list(_STATE_KEYS)}")
        for name in _STATE_KEYS:
            own, value = getattr(self, name), state[name]
            if not isinstance(value, Tensor) or value.shape != own.shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"queue state: {name} has shape {shape} but this queue needs "
                    f"{tuple(own.shape)} "
                    f"(queue.size={self.size}, dim={self.dim}, num_classes={self.num_classes}); "
                    "resume with the same queue.size, model.head_dims and dataset")
        for name in _STATE_KEYS:
            getattr(self, name).copy_(state[name])
        if self.size:
            self.ptr.remainder_(self.size)
