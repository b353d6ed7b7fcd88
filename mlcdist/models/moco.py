r"""Query/key encoders with a projection head (contrastive) and the BCE baseline classifier.

Paper (MoCo framework): the query encoder :math:`f_q = g \circ h` (backbone :math:`h`,
projection head :math:`g`) is trained; the key encoder :math:`f_k` is its momentum copy,
:math:`\theta_k \leftarrow m\,\theta_k + (1-m)\,\theta_q` (see ``ema.py``). Both outputs are
L2-normalised. After pretraining the head is dropped and ``backbone`` is probed/finetuned.

Key-encoder batch norm. The key encoder stays in train mode, so its BN normalises with the
statistics of the batch it sees and updates its OWN running buffers from its own forward
passes (buffers are never copied from the query; the EMA touches parameters only). To stop
the query and key seeing the same batch statistics (a shortcut the contrastive loss can
exploit), the trainer applies MoCo's shuffle-BN around the key encoder ``ContrastiveModel.key``:
it permutes the key batch across ranks, encodes, and un-permutes (``mlcdist/parallel/``,
``model.key_bn=shuffle``). On one process shuffle-BN degenerates (a permutation of the same
batch has the same statistics), so a single process runs without that protection; nothing
here changes between the two cases.
"""

from __future__ import annotations

import copy
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcdist.config import ModelConfig
from mlcdist.models.backbones import build_backbone


class ProjectionHead(nn.Module):
    """g: Linear(in, h1) -> [BN] -> ReLU -> Linear(h1, h2) -> ... (nothing after the last Linear).

    Paper, ResNet-50: 2048 -> 1024 -> 256. Dropped after pretraining. ``batch_norm`` follows
    the authors' code (Linear-BN-ReLU-Dropout-Linear): each hidden layer is normalised over the
    batch, as in SimCLR's and MoCo v3's heads. Its statistics are per rank (like the backbone's
    BN), so N processes equal one process exactly only without it or with ``key_bn: sync``.
    """

    def __init__(self, in_dim: int, widths: list[int], *, batch_norm: bool = False):
        super().__init__()
        if not widths:
            raise ValueError("model.head_dims: needs at least one width, e.g. [1024, 256]")
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            if i:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(in_dim))
                layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Linear(in_dim, width, bias=not (batch_norm and i < len(widths) - 1)))
            in_dim = width
        self.layers = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LabelPrototypes(nn.Module):
    """C x D label prototypes (the study's ``prototype``, Xavier-uniform); ``forward`` gives them
    L2-normalised.

    A sub-module, called inside the encoder's forward, so that every backend treats them like any
    other weight: DDP reduces their gradient, FSDP2 shards them with the root unit and gathers them
    for the forward, ZeRO-3 gathers them around this module's forward and backward. Returning the raw
    parameter would hand ZeRO-3 a tensor it frees after the forward.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self) -> Tensor:
        return F.normalize(self.weight.float(), dim=1)


class Encoder(nn.Module):
    """Backbone h + projection head g; ``forward`` returns ``normalize(g(h(x)))`` in float32.

    ``backbone`` and ``head`` are separate attributes so the head can be dropped after
    pretraining (``encoder.backbone`` is what evaluation keeps). ``num_prototypes > 0`` adds
    :class:`LabelPrototypes` (the study's prototype losses); ``forward(x, with_prototypes=True)``
    then returns ``(embeddings, prototypes)``.
    """

    def __init__(self, backbone: nn.Module, width: int, head_dims: list[int], *,
                 head_bn: bool = False, num_prototypes: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(width, list(head_dims), batch_norm=head_bn)
        self.feature_dim = width
        self.embed_dim = self.head.out_dim
        if num_prototypes > 0:  # initialised after backbone and head: their weights do not change
            self.prototypes = LabelPrototypes(num_prototypes, self.embed_dim)

    def forward(self, x: Tensor, with_prototypes: bool = False):
        # Normalise in float32: under bf16 autocast the norm of a 256-d vector loses digits
        # that the temperature-scaled similarities then amplify.
        z = F.normalize(self.head(self.backbone(x)).float(), dim=1)
        if with_prototypes:
            if not hasattr(self, "prototypes"):
                raise ValueError("Encoder: built without prototypes (num_prototypes=0)")
            return z, self.prototypes()
        return z


class ContrastiveModel(nn.Module):
    """``query`` (trainable) and ``key`` (its deep copy: no gradients, updated only by EMA).

    A container: the trainer wraps and calls ``query`` and ``key`` separately (both give
    L2-normalised embeddings; keys under ``torch.no_grad()``, ``train/objective.py``). See the
    module docstring for key batch norm.
    """

    def __init__(self, query: Encoder):
        super().__init__()
        self.query = query
        self.key = copy.deepcopy(query)
        for p in self.key.parameters():
            p.requires_grad_(False)
        self.key.train()


class SupervisedModel(nn.Module):
    """Backbone + Linear(feat, num_classes); returns logits. The paper's BCE baseline, and the
    model that eval's finetune mode trains (a pretrained backbone with a new linear layer), so a
    finetuned state dict has the baseline checkpoint's keys (``backbone.*``, ``classifier.*``)."""

    def __init__(self, backbone: nn.Module, width: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(width, num_classes)
        self.feature_dim = width

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.backbone(x))

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone features and logits of one forward pass (eval scores both)."""
        h = self.backbone(x)
        return h, self.classifier(h)


def build_model(cfg: ModelConfig, *, num_classes: int, in_dim: Optional[int] = None,
                kind: Literal["contrastive", "supervised"] = "contrastive",
                image_size: int = 224, prototypes: bool = False) -> nn.Module:
    """``ContrastiveModel`` (MulSupCon / ALL / ANY / study pretraining) or ``SupervisedModel``
    (BCE / ASL / ZLPR).

    ``in_dim`` is the vector length for ``arch=mlp``; ``image_size`` matters for ViT only;
    ``prototypes`` gives the query (and its key copy) ``num_classes`` label prototypes.
    """
    if kind not in ("contrastive", "supervised"):
        raise ValueError(f"build_model: kind must be 'contrastive' or 'supervised', got {kind!r}")
    backbone, width = build_backbone(cfg, in_dim=in_dim, image_size=image_size)
    if kind == "supervised":
        if num_classes <= 0:
            raise ValueError(
                f"build_model: the BCE baseline needs num_classes > 0, got {num_classes}")
        return SupervisedModel(backbone, width, num_classes)
    return ContrastiveModel(Encoder(backbone, width, list(cfg.head_dims), head_bn=cfg.head_bn,
                                    num_prototypes=num_classes if prototypes else 0))
