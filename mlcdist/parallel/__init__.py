"""The one package that knows DDP, FSDP2 and DeepSpeed (model code holds no distributed logic).

==================  ===========================================================================
module              holds
==================  ===========================================================================
``collectives``     world, all_gather_rows, all_reduce_sum, shuffled_keys (floor 1)
``backend``         Strategy, make_accelerator, detect_strategy, deepspeed_config (Accelerate's
                    environment and private state are touched here only)
``wrap``            wrap (DDP / fully_shard per block with fp32 BatchNorm / DeepSpeed engine),
                    backward_and_step, unwrap, inner_optimizer
``state``           ema_views, full / sharded state dicts, ModuleState, OptimizerState
==================  ===========================================================================
"""

from mlcdist.parallel.backend import (
    DS_AUTOCAST_DTYPE, Strategy, deepspeed_config, detect_strategy, make_accelerator,
    restart_accumulation, use_cpu, zero_stage,
)
from mlcdist.parallel.collectives import all_gather_rows, all_reduce_sum, shuffled_keys, world
from mlcdist.parallel.state import (
    EmaViews, ModuleState, OptimizerState, ema_views, full_optimizer_state, full_state_dict, load_full_state_dict,
    load_optimizer_state, local_shard,
)
from mlcdist.parallel.wrap import (
    backward_and_step, batch_norms, inner_optimizer, prepare_replicated, shard_units, unwrap, wrap,
)

__all__ = [
    "DS_AUTOCAST_DTYPE", "ModuleState", "OptimizerState", "Strategy", "all_gather_rows",
    "all_reduce_sum", "backward_and_step", "batch_norms", "deepspeed_config", "detect_strategy",
    "EmaViews", "ema_views", "full_optimizer_state", "full_state_dict", "inner_optimizer", "load_full_state_dict",
    "load_optimizer_state", "local_shard", "make_accelerator", "prepare_replicated", "restart_accumulation", "shard_units",
    "shuffled_keys", "unwrap", "use_cpu", "world", "wrap", "zero_stage",
]
