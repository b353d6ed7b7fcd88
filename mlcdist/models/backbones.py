"""Feature extractors with the classifier removed (the projection head lives in ``moco.py``).

``build_backbone(cfg)`` returns ``(module, feature_width)``:

- ``resnet18`` / ``resnet50``: torchvision ResNet, ``fc`` replaced by Identity; 512 / 2048.
- ``vit_b_16``: torchvision ViT-B/16 at ``image_size``, ``heads`` replaced by Identity; 768.
- ``mlp``: the paper's vector encoder, Linear -> ReLU -> Dropout per ``mlp_dims``; ``mlp_dims[-1]``.

Gradient checkpointing (``cfg.grad_checkpointing``) recomputes each ResNet stage / each ViT
block in backward (non-reentrant, training only); state_dict keys and BatchNorm running
statistics are exactly those of the plain model.

Weights come only from a LOCAL file (``cfg.weights``): nothing is ever downloaded. The paper
trains from scratch, so ``weights`` is normally null. Distributed wrapping and
``channels_last`` live elsewhere (``mlcdist/parallel/``, the trainer).
"""

from __future__ import annotations

from mlcdist.errors import MlcdistError

from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from torch.utils.checkpoint import checkpoint

from mlcdist.config import ModelConfig
from mlcdist.models.dropout import Dropout
from mlcdist.models.state import load_state_strict

FEATURE_WIDTHS = {"resnet18": 512, "resnet50": 2048, "vit_b_16": 768}
_CLASSIFIER_PREFIXES = ("fc.", "heads.")  # torchvision classifier keys, dropped when loading


class WeightsFileError(MlcdistError):
    """A ``model.weights`` file that cannot be read or does not fit the architecture."""


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing that keeps state_dict keys and BatchNorm statistics unchanged.
# ---------------------------------------------------------------------------------------------


class _RestoreBatchNormStats:
    """Recompute-time context: snapshot BN running stats, restore them on exit.

    Checkpointing re-runs the forward in backward; without this, every BatchNorm in the
    segment would update its running mean/var twice per step and drift from the
    non-checkpointed model.
    """

    def __init__(self, module: nn.Module):
        self.bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @staticmethod
    def _stats(bn: nn.Module) -> list[torch.Tensor]:
        stats = (bn.running_mean, bn.running_var, bn.num_batches_tracked)
        return [b for b in stats if b is not None]

    def __enter__(self) -> None:
        self.saved = [[b.clone() for b in self._stats(m)] for m in self.bns]

    def __exit__(self, *exc: object) -> None:
        for m, saved in zip(self.bns, self.saved):
            for dst, src in zip(self._stats(m), saved):
                dst.copy_(src)


def _run_checkpointed(module: nn.Module, fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` under non-reentrant checkpointing while training with grad, else plain."""
    if not (module.training and torch.is_grad_enabled()):
        return fn(x)
    return checkpoint(
        fn, x, use_reentrant=False,
        context_fn=lambda: (nullcontext(), _RestoreBatchNormStats(module)),
    )


class CheckpointedStage(nn.Sequential):
    """A ``Sequential`` checkpointed as one segment (a ResNet layer stage).

    Children keep their names, so state_dict keys equal the plain model's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_checkpointed(self, super().forward, x)


class CheckpointedEach(nn.Sequential):
    """A ``Sequential`` whose children are checkpointed one by one (ViT encoder blocks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = _run_checkpointed(block, block, x)
        return x


def _enable_checkpointing(model: nn.Module, arch: str) -> None:
    if arch.startswith("resnet"):
        for name in ("layer1", "layer2", "layer3", "layer4"):
            stage = getattr(model, name)
            setattr(model, name, CheckpointedStage(OrderedDict(stage.named_children())))
    elif arch == "vit_b_16":
        layers = model.encoder.layers
        model.encoder.layers = CheckpointedEach(OrderedDict(layers.named_children()))
    # The MLP is too small for checkpointing to pay off; the switch is a no-op there.


# ---------------------------------------------------------------------------------------------
# Local weights files.
# ---------------------------------------------------------------------------------------------


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load a local state_dict file into ``model`` (classifier keys ``fc.*``/``heads.*`` ignored).

    The file is read with ``torch.load(weights_only=True)``; any missing, unexpected or
    wrongly-shaped key raises :class:`WeightsFileError` listing them.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(
            f"model.weights: {path} not found; give a local state_dict file or null")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code, wrong format...
        raise WeightsFileError(
            f"model.weights: {path} is not a readable torch state_dict "
            f"({type(err).__name__}: {err}); save one with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(
            f"model.weights: {path} must hold a mapping of parameter name -> tensor")
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    load_state_strict(model, state, source="file", error=lambda mismatch: WeightsFileError(
        f"model.weights: {path} does not fit this architecture; {mismatch}. "
        "Check model.arch (and image_size for ViT) matches the file"))


# ---------------------------------------------------------------------------------------------
# Builders.
# ---------------------------------------------------------------------------------------------


def build_mlp(in_dim: int, dims: list[int], dropout: float) -> nn.Sequential:
    """Paper's vector encoder: for each width ``h``: Linear(prev, h) -> ReLU -> Dropout(p)
    (``models/dropout.py``: ``nn.Dropout`` with a 3x cheaper CPU mask)."""
    layers: list[nn.Module] = []
    prev = in_dim
    for width in dims:
        layers += [nn.Linear(prev, width), nn.ReLU(inplace=True), Dropout(dropout)]
        prev = width
    return nn.Sequential(*layers)


def build_backbone(
    cfg: ModelConfig, *, in_dim: int | None = None, image_size: int = 224
) -> tuple[nn.Module, int]:
    """Feature extractor for ``cfg.arch`` and its output width (see module docstring).

    ``in_dim`` is required for ``mlp`` (the vector length); ``image_size`` sets the ViT's
    input resolution (multiple of 16) and is ignored by the others.
    """
    if cfg.arch == "mlp":
        if in_dim is None or in_dim <= 0:
            raise ValueError(
                "model.arch=mlp needs in_dim (the input vector length, from dataset.json), "
                f"got {in_dim!r}"
            )
        model: nn.Module = build_mlp(in_dim, list(cfg.mlp_dims), cfg.dropout)
        width = cfg.mlp_dims[-1]
    elif cfg.arch in ("resnet18", "resnet50"):
        model = getattr(torchvision.models, cfg.arch)(weights=None)
        model.fc = nn.Identity()
        width = FEATURE_WIDTHS[cfg.arch]
    elif cfg.arch == "vit_b_16":
        if image_size % 16:
            raise ValueError(
                f"vit_b_16 needs image_size divisible by 16 (augment.image_size), got {image_size}")
        model = torchvision.models.vit_b_16(weights=None, image_size=image_size)
        model.heads = nn.Identity()
        width = FEATURE_WIDTHS["vit_b_16"]
    else:
        raise ValueError(
            f"model.arch: unknown {cfg.arch!r}; use resnet18, resnet50, vit_b_16 or mlp")
    if cfg.weights:
        load_weights_file(model, cfg.weights)
    if cfg.grad_checkpointing:
        _enable_checkpointing(model, cfg.arch)
    return model, width
