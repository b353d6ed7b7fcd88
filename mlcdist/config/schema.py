"""The typed recipe tree: one dataclass per component, each with ``validate()``.

A recipe is a YAML mapping whose top-level keys are the components below. Each component
receives only its own dataclass. Bad values raise a field error that the loader
(``mlcdist/config/loading.py``) turns into a :class:`ConfigError` naming the file and the
dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from mlcdist.errors import MlcdistError

class ConfigError(MlcdistError):
    """A recipe problem, phrased as ``SOURCE: dotted.key: what is wrong; how to fix it``."""


class _NonFinite(ConfigError):
    """A float field got NaN or +-inf (never a valid setting; not retried by ``Optional``)."""


# ---------------------------------------------------------------------------------------------
# Components. Defaults follow the MulSupCon paper (image setting) unless a comment says otherwise.
# ---------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where shards live and how batches are formed.

    ``train``/``val``/``test`` are shard folders holding ``dataset.json`` (or any URL/brace
    pattern webdataset opens, with ``dataset.json`` beside it). ``batch_size`` is per process:
    the global batch is ``batch_size x world_size x optim.grad_accum``. A shard that delivers
    fewer samples than ``dataset.json`` promises stops the run, naming the shard, unless
    ``allow_missing`` (then its missing samples are skipped and counted, like corrupt ones).
    ``max_skipped_fraction``: the largest share of an epoch's samples (all ranks) that may be
    corrupt or missing (skipped, their batch slots refilled) before training stops with an error.
    ``hold_out_val``: with no ``val`` split, pretraining leaves out the rows ``mlcdist.eval`` will
    carve from ``train`` as its validation split (``eval.val_fraction``, ``eval.seed``), so the
    epoch and threshold chosen on them are chosen on rows, and labels, the encoder never saw.
    """

    train: str = ""
    val: str = ""
    test: str = ""
    batch_size: int = 64
    num_workers: int = 4
    shuffle_buffer: int = 1000
    resampled: bool = False
    seed: int = 0
    max_skipped_fraction: float = 0.01
    allow_missing: bool = False
    hold_out_val: bool = True

    def validate(self) -> None:
        _positive(self, "batch_size")
        _non_negative(self, "num_workers")
        _non_negative(self, "shuffle_buffer")
        _probability(self, "max_skipped_fraction")


@dataclass
class AugmentConfig:
    """Two-view augmentation (paper: random resized crop, colour jitter, grayscale; MoCo v2 flip).

    ``device`` picks the CPU (torchvision transforms in loader workers) or GPU path.
    Vectors get independent random masks of ``mask_ratio`` of their entries.
    """

    image_size: int = 224
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    grayscale_p: float = 0.2
    mask_ratio: float = 0.5
    device: Literal["cpu", "gpu"] = "cpu"

    def validate(self) -> None:
        _positive(self, "image_size")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise _bad("crop_scale", f"{self.crop_scale} must satisfy 0 < min <= max <= 1")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            _probability(self, name)
        if not 0 <= self.mask_ratio < 1:
            raise _bad("mask_ratio", f"{self.mask_ratio} must be in [0, 1)")


@dataclass
class ModelConfig:
    """Query encoder = backbone + projection head; the key encoder is its EMA copy.

    ``arch``: torchvision ``resnet18``/``resnet50``/``vit_b_16`` or the paper's ``mlp`` for
    vectors (``mlp_dims`` hidden widths, each linear-ReLU-dropout). ``head_dims`` are the
    projection head widths after the backbone (paper, ResNet-50: 2048 -> 1024 -> 256);
    ``head_bn`` puts BatchNorm after each hidden head layer, as the authors' code does.
    ``key_bn`` chooses how batch norm is handled across ranks: ``shuffle`` (MoCo shuffle-BN:
    the key encoder normalises a random cross-rank group, hiding the query's own batch) or
    ``sync`` (SyncBatchNorm in both encoders: global statistics, so N processes equal one).
    """

    arch: Literal["resnet18", "resnet50", "vit_b_16", "mlp"] = "resnet50"
    weights: Optional[str] = None
    mlp_dims: list[int] = field(default_factory=lambda: [256, 256, 256])
    dropout: float = 0.1
    head_dims: list[int] = field(default_factory=lambda: [1024, 256])
    head_bn: bool = True
    momentum: float = 0.999
    momentum_schedule: Literal["constant", "cosine"] = "constant"
    key_bn: Literal["shuffle", "sync"] = "shuffle"
    grad_checkpointing: bool = False
    channels_last: bool = False
    compile: bool = False

    def validate(self) -> None:
        if not 0 <= self.momentum < 1:
            raise _bad("momentum", f"{self.momentum} must be in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise _bad("dropout", f"{self.dropout} must be in [0, 1)")
        if not self.head_dims or min(self.head_dims) <= 0:
            raise _bad("head_dims", "needs at least one positive width, e.g. [1024, 256]")
        if not self.mlp_dims or min(self.mlp_dims) <= 0:
            raise _bad("mlp_dims", "needs at least one positive width, e.g. [256, 256, 256]")


SUPERVISED_KINDS = ("bce", "asl", "zlpr")
PROTOTYPE_KINDS = ("proto", "msc", "reg", "reg_plain")
IN_BATCH_KINDS = ("mulsupcon", "jaccard", "proto", "msc", "reg", "reg_plain")


@dataclass
class LossConfig:
    """``kind``: MulSupCon eq. (4)+(5), ``weighted`` eq. (6), ``all``/``any`` eq. (1); the study's
    (Audibert et al. 2024) ``jaccard``, ``proto``, ``msc``, ``reg``, ``reg_plain`` (label prototypes
    for the last four); or a supervised baseline ``bce`` (the paper's), ``asl``, ``zlpr`` (backbone +
    linear classifier, no contrast). See docs/losses.md.

    ``candidates``: ``moco`` (the anchors' own keys, the global batch's keys and the queue) or
    ``batch`` (the study's setting: one view, the global batch, self excluded; no key, no queue).
    ``alpha``: ``msc`` weight of instance positives (default 1), ``reg``/``reg_plain`` overlap exponent
    (default 0; < 0: hard subset threshold); ``beta``: ``msc`` weight of instances in the denominator.
    ``gamma_neg``, ``gamma_pos``, ``clip``, ``eps``: ``asl`` (the study's defaults).
    """

    kind: Literal["mulsupcon", "weighted", "all", "any", "jaccard", "proto", "msc", "reg", "reg_plain",
                  "bce", "asl", "zlpr"] = "mulsupcon"
    temperature: float = 0.1
    candidates: Literal["moco", "batch"] = "moco"
    alpha: Optional[float] = None
    beta: float = 0.1
    gamma_neg: float = 1.0
    gamma_pos: float = 0.0
    clip: float = 0.0
    eps: float = 1e-5

    @property
    def supervised(self) -> bool:
        return self.kind in SUPERVISED_KINDS

    @property
    def prototypes(self) -> bool:
        """Does the query model hold label prototypes (C x D) for this loss?"""
        return self.kind in PROTOTYPE_KINDS

    def validate(self) -> None:
        _positive(self, "temperature")
        if self.candidates == "batch" and self.kind not in IN_BATCH_KINDS:
            raise _bad("candidates", f"batch is the study's in-batch setting, for kind "
                                     f"{', '.join(IN_BATCH_KINDS)}; kind {self.kind} needs candidates=moco")
        if self.alpha is not None and self.kind not in ("msc", "reg", "reg_plain"):
            raise _bad("alpha", f"is used by kind msc, reg, reg_plain only, not {self.kind}; remove it")
        for name in ("beta", "gamma_neg", "gamma_pos"):
            _non_negative(self, name)
        if not 0 <= self.clip < 1:
            raise _bad("clip", f"{self.clip} must be in [0, 1)")
        _positive(self, "eps")


@dataclass
class QueueConfig:
    """MoCo key queue: ``size`` keys with their multi-hot labels (0 disables the queue)."""

    size: int = 8192

    def validate(self) -> None:
        _non_negative(self, "size")


@dataclass
class OptimConfig:
    """``lr`` is the peak learning rate for the global batch the recipe describes; see the
    docs for scaling to more GPUs (linear rule for SGD, square-root for Adam)."""

    name: Literal["sgd", "adam", "adamw", "lars"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_accum: int = 1
    grad_clip: Optional[float] = None
    fused: bool = True

    def validate(self) -> None:
        _positive(self, "lr")
        _non_negative(self, "weight_decay")
        _positive(self, "grad_accum")


@dataclass
class ScheduleConfig:
    """Cosine (paper) or constant LR with linear warm-up, computed from the global step.

    ``max_steps`` caps the run (handy for smoke tests); otherwise ``epochs`` decides.
    """

    epochs: int = 400
    kind: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    max_steps: Optional[int] = None

    def validate(self) -> None:
        _positive(self, "epochs")
        _non_negative(self, "warmup_epochs")
        _non_negative(self, "min_lr")
        if self.max_steps is not None:
            _positive(self, "max_steps")


@dataclass
class PrecisionConfig:
    mixed: Literal["no", "bf16", "fp16"] = "no"


@dataclass
class ParallelConfig:
    """``timeout_minutes``: how long a collective (all-reduce, barrier, all-gather) waits for a
    stalled or dead rank before the job fails (torch's own defaults: 30 min gloo, 10 min NCCL).
    Raise it when a rank legitimately works alone for long, e.g. rank 0 saving a huge checkpoint."""

    timeout_minutes: float = 10.0

    def validate(self) -> None:
        _positive(self, "timeout_minutes")


@dataclass
class CheckpointConfig:
    """Checkpoints go to ``RUN_DIR/checkpoints``; ``resume``: ``auto`` (latest, if any),
    a checkpoint path, or null."""

    every_steps: int = 0
    every_epochs: int = 1
    keep_last: int = 3
    resume: Optional[str] = "auto"

    def validate(self) -> None:
        _non_negative(self, "every_steps")
        _non_negative(self, "every_epochs")
        _positive(self, "keep_last")


@dataclass
class LoggingConfig:
    """``report_to``: experiment trackers fed through Accelerate (``mlcdist/train/tracking.py``),
    e.g. ``[tensorboard]``; each needs its package (``pip install 'mlcdist[track]'``).
    ``loss_curve``: draw ``loss_curve.png`` at the end (``python -m mlcdist.eval plot RUN``
    draws it later too; grids of short runs turn it off: matplotlib takes ~1 s per run)."""

    run_dir: str = "runs/default"
    every_steps: int = 10
    progress: bool = True
    loss_curve: bool = True
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive",
                            "swanlab", "trackio"]] = field(default_factory=list)

    def validate(self) -> None:
        _positive(self, "every_steps")
        if len(set(self.report_to)) != len(self.report_to):
            raise _bad("report_to", f"{self.report_to} names a tracker twice")


@dataclass
class EvalConfig:
    """Linear probe / finetune / transfer settings (paper defaults: Adam, probe lr 0.01,
    finetune lr 1e-4 with backbone at ``backbone_lr``, reduce-on-plateau x0.1).

    ``transfer``: evaluate on another dataset than the pretraining one (``data.*`` must name
    its shards; its class count may differ from the checkpoint's). ``standardize``: the linear
    probe trains on features standardised with the train split's mean and std (the saved head
    is folded back to act on raw features). See ``docs/eval.md``.
    """

    mode: Literal["linear", "finetune"] = "linear"
    transfer: bool = False
    epochs: int = 100
    lr: float = 0.01
    backbone_lr: float = 1e-4
    batch_size: int = 256
    weight_decay: float = 0.0
    plateau_patience: int = 5
    early_stop_patience: int = 20
    val_fraction: float = 0.1
    select_metric: str = "mAP"
    seed: int = 0
    standardize: bool = True

    def validate(self) -> None:
        _positive(self, "epochs")
        _positive(self, "lr")
        _positive(self, "backbone_lr")
        _positive(self, "batch_size")
        if not 0 < self.val_fraction < 1:
            raise _bad("val_fraction", f"{self.val_fraction} must be in (0, 1)")


@dataclass
class RecipeConfig:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------
# Validation helpers: raise a _FieldError that the loader turns into a ConfigError with context.
# ---------------------------------------------------------------------------------------------


class _FieldError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _bad(key: str, message: str) -> _FieldError:
    return _FieldError(key, message)


def _positive(cfg: Any, name: str) -> None:
    if getattr(cfg, name) <= 0:
        raise _bad(name, f"{getattr(cfg, name)!r} must be > 0")


def _non_negative(cfg: Any, name: str) -> None:
    if getattr(cfg, name) < 0:
        raise _bad(name, f"{getattr(cfg, name)!r} must be >= 0")


def _probability(cfg: Any, name: str) -> None:
    if not 0 <= getattr(cfg, name) <= 1:
        raise _bad(name, f"{getattr(cfg, name)!r} must be a probability in [0, 1]")
