"""The backend of a run, from the Accelerate config: the only code that reads Accelerate's
environment variables or touches its private state.

The backend comes from ``accelerate launch --config_file recipes/accelerate/X.yaml``, i.e. from
the environment Accelerate sets up:

| Accelerate config            | strategy    | query encoder                  | key encoder          |
|------------------------------|-------------|--------------------------------|----------------------|
| 1 process                    | ``single``  | plain module                   | plain module         |
| ``MULTI_GPU`` / ``MULTI_CPU``| ``ddp``     | DistributedDataParallel        | plain replica        |
| ``FSDP`` (version 2)         | ``fsdp2``   | ``fully_shard`` per block      | sharded the same way |
| ``DEEPSPEED`` (ZeRO-1/2/3)   | ``deepspeed``| DeepSpeedEngine               | plain fp32 replica   |
"""

from __future__ import annotations

import os
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Optional, Sequence

import torch

from mlcdist.errors import MlcdistError


class Strategy(str, Enum):
    SINGLE = "single"
    DDP = "ddp"
    FSDP2 = "fsdp2"
    DEEPSPEED = "deepspeed"

def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")

def use_cpu() -> bool:
    return _env_true("ACCELERATE_USE_CPU") or not torch.cuda.is_available()

def process_group_kwargs(cpu: bool, timeout_minutes: float):
    """Accelerate's ``init_process_group`` settings: gloo on CPU, ``parallel.timeout_minutes``
    for every collective (a stalled rank fails the job after it, not after torch's 30 min)."""
    from accelerate.utils import InitProcessGroupKwargs

    timeout = timedelta(minutes=timeout_minutes)
    return InitProcessGroupKwargs(backend="gloo", timeout=timeout) if cpu else InitProcessGroupKwargs(timeout=timeout)


def check_precision(mixed_precision: str) -> None:
    """Refuse a ``precision.mixed`` this machine cannot run, before any data or model loads."""
    if mixed_precision == "fp16" and use_cpu():
        # torch can autocast to fp16 on CPU, but Accelerate then neither autocasts nor scales
        # the loss, so a run would silently train in fp32: refuse it before any step.
        raise MlcdistError("precision.mixed: fp16 needs a CUDA device (Accelerate has no fp16 "
                           "autocast or loss scaler on CPU); use precision.mixed=bf16 or no")


def make_accelerator(mixed_precision: str = "no", grad_accum: int = 1, timeout_minutes: float = 10.0, *,
                     log_with: Sequence[str] = (), run_dir: Optional[Path] = None):
    """An Accelerator for this process; gloo on CPU, fp16 only on CUDA; collectives give up
    after ``timeout_minutes`` (``parallel.timeout_minutes``). ``log_with``: the trackers of
    ``logging.report_to`` (``train/tracking.py``); local ones write under ``run_dir``
    (TensorBoard: ``RUN/tensorboard``)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    cpu = use_cpu()
    check_precision(mixed_precision)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [process_group_kwargs(cpu, timeout_minutes)] if distributed else []
    # DeepSpeed is initialised by `wrap` itself (Accelerate's plugin needs transformers and
    # is disabled on CPU), so Accelerate sets up a plain process group here.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a process may train then evaluate with other precisions
    saved = os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    tracking = {}
    if log_with:
        tracking = {"log_with": list(log_with), "project_config": ProjectConfiguration(
            project_dir=str(run_dir), logging_dir=str(Path(run_dir) / "tensorboard"))}
    try:
        accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                                  kwargs_handlers=handlers, cpu=cpu, **tracking)
    finally:
        if saved is not None:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = saved
    return accelerator

def detect_strategy(accelerator) -> Strategy:
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED or _env_true("ACCELERATE_USE_DEEPSPEED"):
        return Strategy.DEEPSPEED
    if kind == DistributedType.FSDP or _env_true("ACCELERATE_USE_FSDP"):
        return Strategy.FSDP2
    if accelerator.num_processes > 1:
        return Strategy.DDP
    return Strategy.SINGLE

def zero_stage(accelerator=None) -> int:
    """ZeRO stage from the Accelerate config (``accelerate launch`` exports it)."""
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))

DS_AUTOCAST_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}

def deepspeed_config(mixed_precision: str, micro_batch: int, grad_accum: int,
                     grad_clip: Optional[float]) -> dict:
    """The engine config, from the Accelerate config's environment and the recipe."""
    offload_opt = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none")
    offload_param = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none")
    zero: dict = {"stage": zero_stage()}
    if offload_opt != "none":
        zero["offload_optimizer"] = {"device": offload_opt}
    if offload_param != "none":
        zero["offload_param"] = {"device": offload_param}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip or 0.0,
        "zero_optimization": zero,
        # No "bf16"/"fp16" sections: those cast the whole module, BatchNorm statistics and
        # affine parameters included, to 16 bits. "torch_autocast" keeps every parameter in
        # fp32 and autocasts the engine's forward (BatchNorm stays fp32, as under DDP), reduces
        # Linear/Conv gradients in 16 bits, and for fp16 drives a torch GradScaler (loss scaling).
        **({"torch_autocast": {"enabled": True, "dtype": DS_AUTOCAST_DTYPE[mixed_precision]}}
           if mixed_precision in DS_AUTOCAST_DTYPE else {}),
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
    }


def restart_accumulation(accelerator) -> None:
    """Start a new gradient-accumulation cycle (checkpoints sit on cycle ends, and an epoch
    starts one): Accelerate counts micro-batches in its own ``step`` attribute."""
    accelerator.step = 0
