"""Model code: encoders, projection head, momentum copy. No distributed logic here."""

from mlcdist.models.backbones import (
    FEATURE_WIDTHS, WeightsFileError, build_backbone, load_weights_file,
)
from mlcdist.models.ema import ema_update_
from mlcdist.models.state import load_state_strict
from mlcdist.models.moco import (
    ContrastiveModel, Encoder, ProjectionHead, SupervisedModel, build_model,
)

__all__ = [
    "FEATURE_WIDTHS", "ContrastiveModel", "Encoder", "ProjectionHead", "SupervisedModel",
    "WeightsFileError", "build_backbone", "build_model", "ema_update_", "load_state_strict",
    "load_weights_file",
]
