r"""Train a classifier on top of a pretrained backbone and select the epoch on validation.

Both modes minimise the multi-label BCE over ``C`` classes with logits :math:`z = W h + b`,

.. math:: \ell = -\frac{1}{NC} \sum_{n,c} y_{nc} \log \sigma(z_{nc}) + (1 - y_{nc}) \log(1 - \sigma(z_{nc})),

with Adam (paper), and after every epoch score the validation split. The learning rate is
multiplied by 0.1 when the validation ``select_metric`` has not improved for
``plateau_patience`` epochs (``ReduceLROnPlateau``), training stops after
``early_stop_patience`` epochs without improvement, and the weights of the best validation
epoch are kept. The test split is scored once, with those weights: test data never takes part
in a decision.

- ``linear``: backbone frozen, head dropped; ``nn.Linear(D, C)`` trained on cached features
  (mini-batches of ``eval.batch_size``, reshuffled every epoch with ``eval.seed``), standardised
  with the train rows' mean and std (``eval.standardize``, as MAE's BatchNorm without affine): a
  linear model over them is the same family, but Adam at ``eval.lr`` then behaves alike for an
  encoder whose features are of size 1e-3 or 1e3 (a random ResNet's). The saved head is folded
  back (``W / s``, ``b - W mu / s``) to act on raw features.

Both modes warn (``ProbeResult.warnings``, into ``metrics.json``) when the training loss diverges
(:func:`divergence_warning`).
- ``finetune``: backbone + a new linear layer trained end to end; parameter groups
  ``backbone`` at ``eval.backbone_lr`` and ``head`` at ``eval.lr``. The input is the eval view
  (resize + centre crop; raw vectors), no augmentation, in dataset order.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcdist.config import ConfigError, EvalConfig
from mlcdist.eval.features import FeatureSet, collect
from mlcdist.metrics import METRICS, multilabel_metrics
from mlcdist.models.moco import SupervisedModel
from mlcdist.optim import adam, kernel_choice
from mlcdist.parallel import (
    Strategy, all_reduce_sum, backward_and_step, full_state_dict, inner_optimizer, prepare_replicated, unwrap,
    world,
)
from mlcdist.progress import length, track

SELECT_CHOICES = (*METRICS, "loss")


def check_select_metric(name: str) -> None:
    if name not in SELECT_CHOICES:
        raise ConfigError(f"eval.select_metric: {name!r} is not one of {', '.join(SELECT_CHOICES)}")


class EpochSelector:
    """Tracks the best validation epoch, drives ReduceLROnPlateau and early stopping.

    ``loss`` is minimised, every metric maximised; a ``nan`` value never counts as better.
    """

    def __init__(self, cfg: EvalConfig, optimizer: torch.optim.Optimizer):
        check_select_metric(cfg.select_metric)
        self.metric = cfg.select_metric
        self.sign = -1.0 if self.metric == "loss" else 1.0
        self.patience = cfg.early_stop_patience
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.1, patience=cfg.plateau_patience)
        self.optimizer = optimizer
        self.best = -math.inf
        self.best_epoch = 0
        self.history: list[dict] = []

    def update(self, epoch: int, train_loss: float, val_loss: float, val_metrics: dict) -> bool:
        """Record an epoch; True when it is the new best (the caller keeps its weights)."""
        value = val_loss if self.metric == "loss" else val_metrics[self.metric]
        score = -math.inf if math.isnan(value) else self.sign * value
        self.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                             f"val_{self.metric}": value,
                             "lr": [g["lr"] for g in self.optimizer.param_groups]})
        self.scheduler.step(score)
        if score > self.best:
            self.best, self.best_epoch = score, epoch
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return len(self.history) - self.best_epoch >= self.patience


@dataclass
class ProbeResult:
    """Validation and test probabilities of the selected epoch, and the test features used
    for the class-similarity plot (frozen or finetuned backbone)."""

    selected_epoch: int
    epochs_run: int
    history: list[dict]
    val_scores: Tensor
    val_targets: Tensor
    test_scores: Tensor
    test_targets: Tensor
    test_features: Tensor
    head_state: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    model_state: dict = field(default_factory=dict)  # finetune: the selected backbone.* + head.*


def divergence_warning(history: list[dict], what: str, fix: str) -> Optional[str]:
    """A warning when the training loss went non-finite, rose (ended above its first epoch's or
    at more than 1.5x its lowest) or ended above ln 2, the loss of predicting 0.5 for every label
    (which a zero-initialised head starts near); None when it behaved. ``fix`` ends the message."""
    losses = [h["train_loss"] for h in history]
    if not losses:
        return None
    finite = [v for v in losses if math.isfinite(v)]
    low = min(finite) if finite else math.nan
    last, first = losses[-1], losses[0]
    rose = len(losses) > 1 and (last > first or last > 1.5 * low)
    if len(finite) == len(losses) and not rose and last <= math.log(2):
        return None
    best_epoch = history[losses.index(low)]["epoch"] if finite else None
    return (f"{what}: the training loss diverged (epoch 1 {first:.4g}, lowest {low:.4g}"
            f"{f' at epoch {best_epoch}' if best_epoch else ''}, last {last:.4g} at epoch "
            f"{history[-1]['epoch']}; predicting 0.5 for every label scores ln 2 = 0.693); {fix}")


def standardizer(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` over rows; a constant column gets std 1 (it stays 0 after centring)."""
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    return mean, torch.where(std > 1e-8 * std.max().clamp(min=1e-30), std, torch.ones_like(std))


def fold_standardizer(state: dict, mean: Tensor, std: Tensor) -> dict:
    """The head on standardised features as one on raw ones: ``W (x - m) / s + b``."""
    weight = state["weight"] / std
    return {"weight": weight, "bias": state["bias"] - weight @ mean}


def _val_summary(logits: Tensor, targets: Tensor) -> tuple[float, dict]:
    loss = F.binary_cross_entropy_with_logits(logits, targets).item()
    return loss, multilabel_metrics(torch.sigmoid(logits), targets)


def train_linear_probe(train: FeatureSet, val: FeatureSet, test: FeatureSet, cfg: EvalConfig,
                       device: torch.device, log: Callable[[str], None] = lambda _: None) -> ProbeResult:
    """Frozen features -> ``nn.Linear`` with Adam + BCE (module docstring)."""
    x, y = train.features.to(device), train.labels.to(device)
    xv, yv, xt = val.features.to(device), val.labels.to(device), test.features.to(device)
    if cfg.standardize:
        mean, std = standardizer(x)
        x, xv, xt = ((v - mean) / std for v in (x, xv, xt))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = nn.Linear(x.shape[1], y.shape[1]).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    selector = EpochSelector(cfg, optimizer)
    order = torch.Generator().manual_seed(cfg.seed)
    best = copy.deepcopy(head.state_dict())
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        total = 0.0
        for rows in torch.randperm(len(x), generator=order).to(device).split(cfg.batch_size):
            loss = F.binary_cross_entropy_with_logits(head(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        head.eval()
        with torch.no_grad():
            val_loss, val_metrics = _val_summary(head(xv), yv)
        if selector.update(epoch, total / len(x), val_loss, val_metrics):
            best = copy.deepcopy(head.state_dict())
        if epoch % 10 == 0 or epoch == 1:
            log(f"epoch {epoch}: train loss {total / len(x):.4f}, val loss {val_loss:.4f}, "
                f"val mAP {val_metrics['mAP']:.4f}")
        if selector.should_stop:
            break
    head.load_state_dict(best)
    with torch.no_grad():
        val_scores = torch.sigmoid(head(xv)).cpu()
        test_scores = torch.sigmoid(head(xt)).cpu()
    if cfg.standardize:
        best = fold_standardizer(best, mean, std)
    warning = divergence_warning(selector.history, "linear probe", "lower eval.lr" + (
        "" if cfg.standardize else " or set eval.standardize=true"))
    if warning:
        log(f"[bold yellow]warning:[/] {warning}")
    return ProbeResult(selector.best_epoch, len(selector.history), selector.history, val_scores,
                       val.labels, test_scores, test.labels, test.features,
                       {k: v.cpu() for k, v in best.items()}, [warning] if warning else [])


@dataclass
class FinetuneData:
    """Loaders of this rank: ``train`` (eval mode), ``val`` (None: carved rows of ``train``
    where ``val_mask[index]``), ``test``; ``val_mask`` is None when the dataset has a val split."""

    train: object
    val: Optional[object]
    test: object
    val_mask: Optional[Tensor]


def _finetune_epoch(acc, strategy: Strategy, model: nn.Module, optimizer, data: FinetuneData,
                    epoch: int, epochs: int) -> float:
    """One finetuning epoch over ``data.train`` (carved validation rows left out); returns the
    mean training BCE over the global batch rows it saw."""
    device = acc.device
    _, size = world()
    model.train()
    total, seen = torch.zeros((), device=device), torch.zeros((), device=device)
    for batch in track(data.train, length(data.train), f"finetune epoch {epoch}/{epochs}",
                       enabled=acc.is_main_process, lines=4):
        keep = batch["valid"].clone()
        if data.val_mask is not None:
            keep &= ~data.val_mask[batch["index"].clamp(min=0)]
        # Padding and carved validation rows stay out of the forward pass (and so out of the
        # batch-norm statistics); a rank left with < 2 rows (BN needs 2) runs the whole
        # batch at weight 0, because under DDP every rank must take part in every step.
        rows = keep.nonzero().squeeze(1) if int(keep.sum()) >= 2 else torch.arange(len(keep))
        x = batch["input"][rows].to(device, non_blocking=True)
        y = batch["labels"][rows].to(device, non_blocking=True)
        weight = keep[rows].to(device, torch.float32)
        # Sum over this rank's kept rows / global kept rows * world: DDP's gradient average
        # then equals the gradient of the mean BCE over the global batch.
        count = all_reduce_sum(weight.sum()).clamp(min=1)
        with acc.autocast():
            logits = model(x).float()
        per_row = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)
        loss = (per_row * weight).sum() * size / count
        backward_and_step(acc, strategy, model, optimizer, loss, None)
        total += (per_row.detach() * weight).sum()
        seen += weight.sum()
    return (all_reduce_sum(total) / all_reduce_sum(seen).clamp(min=1)).item()


def finetune(acc, strategy: Strategy, backbone: nn.Module, width: int, num_classes: int,
             data: FinetuneData, cfg: EvalConfig,
             log: Callable[[str], None] = lambda _: None) -> ProbeResult:
    """End-to-end BCE finetuning on one process or DDP (module docstring). Every rank computes
    the same gathered validation scores, so all ranks take the same selection decisions."""
    device = acc.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = SupervisedModel(backbone, width, num_classes)  # backbone + new linear layer
    model.to(device)
    # fused where the kernels exist, as in pretraining: the per-tensor loop was a quarter of a
    # vector finetune (yeast: 3.1 vs 3.9 s a run)
    optimizer = adam([
        {"params": model.backbone.parameters(), "lr": cfg.backbone_lr},
        {"params": model.classifier.parameters(), "lr": cfg.lr},
    ], weight_decay=cfg.weight_decay, **kernel_choice(model))
    model, optimizer = prepare_replicated(acc, strategy, model, optimizer, what="eval.mode=finetune")
    plain = unwrap(model)
    selector = EpochSelector(cfg, inner_optimizer(optimizer))
    val_loader = data.val if data.val is not None else data.train
    best_state, val_scores, val_targets = full_state_dict(acc, strategy, model), None, None

    def score(loader, mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        plain.eval()
        (feats, logits), labels, index = collect(loader, plain.features_and_logits, device, acc.autocast)
        if mask is not None:
            rows = mask[index]
            feats, logits, labels = feats[rows], logits[rows], labels[rows]
        return feats, logits, labels

    for epoch in range(1, cfg.epochs + 1):
        train_loss = _finetune_epoch(acc, strategy, model, optimizer, data, epoch, cfg.epochs)
        _, val_logits, val_labels = score(val_loader, data.val_mask)
        val_loss, val_metrics = _val_summary(val_logits, val_labels)
        if selector.update(epoch, train_loss, val_loss, val_metrics):
            best_state = full_state_dict(acc, strategy, model)
            val_scores, val_targets = torch.sigmoid(val_logits), val_labels
        log(f"epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
            f"val mAP {val_metrics['mAP']:.4f}")
        if selector.should_stop:
            break
    plain.load_state_dict(best_state)
    if val_scores is None:  # no epoch improved (all nan): report the initial weights
        _, val_logits, val_targets = score(val_loader, data.val_mask)
        val_scores = torch.sigmoid(val_logits)
    test_feats, test_logits, test_targets = score(data.test, None)
    warning = divergence_warning(selector.history, "finetune", "lower eval.lr / eval.backbone_lr")
    if warning:
        log(f"[bold yellow]warning:[/] {warning}")
    return ProbeResult(selector.best_epoch, len(selector.history), selector.history, val_scores,
                       val_targets, torch.sigmoid(test_logits), test_targets, test_feats,
                       warnings=[warning] if warning else [], model_state=best_state)
