"""The one strict state-dict loader: every key must be there, nothing extra, every shape equal.

``nn.Module.load_state_dict(strict=True)`` already refuses missing and unexpected keys, but its
message is a multi-line ``RuntimeError`` that lists every key; callers here need one line that
says where the weights came from and what to change (``WeightsFileError``, ``EvalInputError``).
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

from torch import Tensor, nn

_SHOWN = 8  # keys listed per kind; the rest are counted


def _show(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def state_mismatch(own: Mapping[str, Tensor], state: Mapping[str, Tensor],
                   source: str = "file") -> Optional[str]:
    """``"missing keys: ...; unexpected keys: ...; shape-mismatched keys: k (SOURCE (2, 2) vs
    model (3, 3))"`` (only the kinds that occur), or None when ``state`` fits ``own`` exactly."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} ({source} {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        for k in set(own) & set(state) if state[k].shape != own[k].shape)
    found = (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched))
    parts = [f"{label} keys: {_show(keys)}" for label, keys in found if keys]
    return "; ".join(parts) or None


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], *,
                      error: Callable[[str], Exception], source: str = "file") -> None:
    """``module.load_state_dict(state)`` after checking that ``state`` fits exactly; otherwise
    raises ``error(mismatch)`` with the :func:`state_mismatch` line (``source`` names where
    ``state`` came from in shape messages: ``file``, ``checkpoint``)."""
    mismatch = state_mismatch(module.state_dict(), state, source)
    if mismatch is not None:
        raise error(mismatch)
    module.load_state_dict(state)
