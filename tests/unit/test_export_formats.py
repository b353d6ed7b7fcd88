"""Export state: which classifier travels (finetuned head, BCE classifier, never the projection
head), and torchvision's ViT-B/16 loading the backbone with only its head missing."""

from __future__ import annotations

import pytest
import torch

from mlcdist.errors import MlcdistError
from mlcdist.export.formats import ModelSpec, split_model_state, torchvision_weights


def test_only_a_trained_classifier_is_exported():
    w, b = torch.ones(3, 4), torch.zeros(3)
    contrastive = {"backbone.conv.weight": w, "head.0.weight": w, "head.0.bias": b}
    backbone, classifier = split_model_state(contrastive, None)  # head.* is the projection head here
    assert backbone.keys() == {"conv.weight"} and classifier == {}
    backbone, classifier = split_model_state({"backbone.x": w, "classifier.weight": w, "classifier.bias": b}, "finetuned")
    assert backbone.keys() == {"x"} and classifier.keys() == {"weight", "bias"}
    _, bce = split_model_state({"backbone.x": w, "classifier.weight": w, "classifier.bias": b}, None)
    assert torch.equal(bce["weight"], w)
    with pytest.raises(MlcdistError, match="no backbone"):
        split_model_state({"head.weight": w}, None)


def test_vit_backbone_loads_into_torchvision_vit_with_its_image_size():
    import torchvision

    vit = torchvision.models.vit_b_16(weights=None, image_size=32)
    vit.heads = torch.nn.Identity()  # as mlcdist's backbone
    weights = torchvision_weights(dict(vit.state_dict()), {}, ModelSpec("vit_b_16", image_size=32))
    assert "torchvision.models.vit_b_16(image_size=32)" in weights.load
    assert "strict=False)  # missing: heads.head.weight/bias only" in weights.load
