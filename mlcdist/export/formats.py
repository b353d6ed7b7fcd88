"""The query encoder's backbone as weights a plain torchvision or timm model loads.

mlcdist's backbones are torchvision's ResNet-18/50 and ViT-B/16 with the classifier replaced by
``Identity`` (``models/backbones.py``), so the backbone's state dict carries torchvision's own
key names less the classifier (``fc.*``, ``heads.head.*``). timm's ResNets use the same names
and layers (``timm.create_model("resnet50", num_classes=0)`` has no ``fc`` at all). Each export
is checked by loading it into the target model before anything is written.

A classifier is exported only when the checkpoint has a trained one: eval's finetuned model
(``eval/run.py``) and the BCE baseline, both ``models.SupervisedModel`` (``classifier.*``); it becomes ``fc.*`` /
``heads.head.*``, so the target model is built with ``num_classes=C`` and loads strictly.
The projection head and the key encoder are never exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from mlcdist.errors import MlcdistError

BACKBONE = "backbone."
CLASSIFIER = {"resnet18": "fc.", "resnet50": "fc.", "vit_b_16": "heads.head."}
TIMM_NAMES = {"resnet18": "resnet18", "resnet50": "resnet50"}


@dataclass
class ModelSpec:
    """The exported backbone's architecture, from the checkpoint's recipe."""

    arch: str
    image_size: int = 224
    feature_dim: Optional[int] = None  # vector length (mlp)
    mlp_dims: tuple[int, ...] = ()
    dropout: float = 0.0

    def mlp_constructor(self) -> str:
        """``torch.nn.Sequential(...)`` with the key names of mlcdist's MLP (``0.weight``, ...)."""
        layers, prev = [], self.feature_dim
        for width in self.mlp_dims:
            layers += [f"torch.nn.Linear({prev}, {width})", "torch.nn.ReLU()", f"torch.nn.Dropout({self.dropout})"]
            prev = width
        return f"torch.nn.Sequential({', '.join(layers)})"


@dataclass
class Weights:
    """What one export writes: the state dict, its file, and how to load it (code for the card)."""

    state: dict[str, torch.Tensor]
    file: str
    load: str  # python lines that load ``file`` into a fresh model named ``model``
    num_classes: Optional[int]  # the exported classifier's classes (None: the backbone only)


def split_model_state(model: dict[str, torch.Tensor], kind: Optional[str]) -> tuple[dict, dict]:
    """``(backbone, classifier)`` of a checkpoint's ``model`` state: ``backbone.*`` with the prefix
    removed, and a trained linear classifier's ``weight``/``bias`` (empty for contrastive runs,
    whose ``head.*`` is the projection head)."""
    backbone = {k[len(BACKBONE):]: v.detach().clone().contiguous() for k, v in model.items()
                if k.startswith(BACKBONE)}
    if not backbone:
        raise MlcdistError("the checkpoint's model state holds no backbone.* weights; pass a checkpoint "
                           "written by python -m mlcdist.train or eval's finetuned.pt")
    prefix = "classifier." if "classifier.weight" in model else None
    classifier = {} if prefix is None else {
        k[len(prefix):]: v.detach().clone().contiguous() for k, v in model.items()
        if k in (f"{prefix}weight", f"{prefix}bias")}
    return backbone, classifier


def torchvision_model(arch: str, image_size: int, num_classes: Optional[int]) -> torch.nn.Module:
    """torchvision's own model for ``arch`` (random init; classifier of ``num_classes`` or 1000)."""
    import torchvision

    extra = {"image_size": image_size} if arch == "vit_b_16" else {}
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes or 1000, **extra)


def constructor(arch: str, image_size: int, num_classes: Optional[int]) -> str:
    args = [f"image_size={image_size}"] if arch == "vit_b_16" else []
    args += [f"num_classes={num_classes}"] if num_classes else []
    return f"torchvision.models.{arch}({', '.join(args)})"


def _with_classifier(backbone: dict, classifier: dict, arch: str) -> dict:
    return {**backbone, **{CLASSIFIER[arch] + k: v for k, v in classifier.items()}}


def _check_load(model: torch.nn.Module, state: dict, allowed_missing: str, target: str) -> None:
    """Load ``state``; only the classifier (``allowed_missing`` prefix) may be missing."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (allowed_missing and k.startswith(allowed_missing))]
    if missing or result.unexpected_keys:
        raise MlcdistError(f"the backbone does not load into {target} (missing {missing[:4]}, "
                           f"unexpected {result.unexpected_keys[:4]}); this is a bug in mlcdist.export")


def _torch_file(arch: str) -> str:
    return f"{arch}.pth"


def torchvision_weights(backbone: dict, classifier: dict, spec: ModelSpec) -> Weights:
    arch, image_size = spec.arch, spec.image_size
    if arch not in CLASSIFIER:
        raise MlcdistError(f"--format torchvision: model.arch={arch} has no torchvision model; use "
                           "--format safetensors (a plain state dict; the model card shows the module)")
    state = _with_classifier(backbone, classifier, arch)
    num_classes = int(classifier["weight"].shape[0]) if classifier else None
    build = constructor(arch, image_size, num_classes)
    _check_load(torchvision_model(arch, image_size, num_classes), state,
                "" if classifier else CLASSIFIER[arch], build)
    file = _torch_file(arch)
    strict = "" if classifier else (f", strict=False)  # missing: {CLASSIFIER[arch]}weight/bias only "
                                    "(a fresh classifier to train; or replace it with torch.nn.Identity() "
                                    "for features)")
    load = f"model = {build}\nmodel.load_state_dict(torch.load(\"{file}\", weights_only=True){strict or ')'}"
    return Weights(state, file, load, num_classes)


def timm_weights(backbone: dict, classifier: dict, spec: ModelSpec) -> Weights:
    arch = spec.arch
    try:
        import timm
    except ImportError:
        raise MlcdistError("--format timm needs the timm package, which is not installed; pip install "
                           "timm, or use --format torchvision") from None
    if arch not in TIMM_NAMES:
        raise MlcdistError(f"--format timm: model.arch={arch} has no timm model with the same weight "
                           "names; use --format torchvision")
    state = {**backbone, **{f"fc.{k}": v for k, v in classifier.items()}}
    num_classes = int(classifier["weight"].shape[0]) if classifier else 0
    build = f"timm.create_model(\"{TIMM_NAMES[arch]}\", num_classes={num_classes})"
    _check_load(timm.create_model(TIMM_NAMES[arch], pretrained=False, num_classes=num_classes), state, "",
                build)
    file = _torch_file(arch)
    load = f"model = {build}\nmodel.load_state_dict(torch.load(\"{file}\", weights_only=True))"
    return Weights(state, file, load, num_classes or None)


def safetensors_weights(backbone: dict, classifier: dict, spec: ModelSpec) -> Weights:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise MlcdistError("--format safetensors needs the safetensors package, which is not installed; "
                           "pip install safetensors, or use --format torchvision") from None
    if spec.arch in CLASSIFIER:
        tv = torchvision_weights(backbone, classifier, spec)
        load = tv.load.replace(f"torch.load(\"{tv.file}\", weights_only=True)",
                               "safetensors.torch.load_file(\"model.safetensors\")")
        return Weights(tv.state, "model.safetensors", load, tv.num_classes)
    build = spec.mlp_constructor()
    from mlcdist.models.backbones import build_mlp

    _check_load(build_mlp(spec.feature_dim, list(spec.mlp_dims), spec.dropout), backbone, "", build)
    return Weights(dict(backbone), "model.safetensors", f"model = {build}\n"
                   "model.load_state_dict(safetensors.torch.load_file(\"model.safetensors\"))", None)


WRITERS = {"torchvision": torchvision_weights, "timm": timm_weights, "safetensors": safetensors_weights}


def save_weights(weights: Weights, out: Path, metadata: dict[str, str]) -> Path:
    path = out / weights.file
    if weights.file.endswith(".safetensors"):
        import safetensors.torch

        safetensors.torch.save_file(weights.state, str(path), metadata=metadata)
    else:
        torch.save(weights.state, path)
    return path
