"""Recipes: the typed tree (``schema``) and its strict loading (``loading``).

    cfg = load_recipe("recipes/coco.yaml", ["optim.lr=0.05"])   # RecipeConfig
    cfg.data.batch_size, cfg.model.arch, ...                      # each component its dataclass
"""

from mlcdist.config.loading import (
    apply_overrides, dump_yaml, from_dict, load_raw, load_recipe, merge, parse_override, save_recipe,
    to_dict,
)
from mlcdist.config.schema import (
    AugmentConfig, CheckpointConfig, ConfigError, DataConfig, EvalConfig, LoggingConfig, LossConfig,
    ModelConfig, OptimConfig, ParallelConfig, PrecisionConfig, QueueConfig, RecipeConfig, ScheduleConfig,
)

__all__ = [
    "AugmentConfig", "CheckpointConfig", "ConfigError", "DataConfig", "EvalConfig", "LoggingConfig",
    "LossConfig", "ModelConfig", "OptimConfig", "ParallelConfig", "PrecisionConfig", "QueueConfig", "RecipeConfig",
    "ScheduleConfig", "apply_overrides", "dump_yaml", "from_dict", "load_raw", "load_recipe", "merge",
    "parse_override", "save_recipe", "to_dict",
]
