"""The one place that knows DDP, FSDP2 and DeepSpeed: wrapping, gathers, sharded EMA, state dicts.

The backend comes from the Accelerate config (``accelerate launch --config_file
recipes/accelerate/X.yaml``), i.e. from the environment Accelerate sets up:

| Accelerate config            | strategy    | query encoder                  | key encoder          |
|------------------------------|-------------|--------------------------------|----------------------|
| 1 process                    | ``single``  | plain module                   | plain module         |
| ``MULTI_GPU`` / ``MULTI_CPU``| ``ddp``     | DistributedDataParallel        | plain replica        |
| ``FSDP`` (version 2)         | ``fsdp2``   | ``fully_shard`` per block      | sharded the same way |
| ``DEEPSPEED`` (ZeRO-1/2/3)   | ``deepspeed``| DeepSpeedEngine               | plain fp32 replica   |

FSDP2 is applied here with ``torch.distributed.fsdp.fully_shard`` rather than through
Accelerate's plugin, because the plugin silently falls back to DDP on CPU and because the key
encoder must be sharded exactly like the query encoder for a shard-by-shard EMA.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from enum import Enum
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn


class Strategy(str, Enum):
    SINGLE = "single"
    DDP = "ddp"
    FSDP2 = "fsdp2"
    DEEPSPEED = "deepspeed"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def use_cpu() -> bool:
    return _env_true("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def make_accelerator(mixed_precision: str = "no", grad_accum: int = 1):
    """An Accelerator for this process; gloo on CPU, fp16 only on CUDA."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    cpu = use_cpu()
    if cpu and mixed_precision == "fp16":
        # torch can autocast to fp16 on CPU, but Accelerate then neither autocasts nor scales
        # the loss, so a run would silently train in fp32: refuse it before any step.
        from mlcdist.config import ConfigError

        raise ConfigError("precision.mixed: fp16 needs a CUDA device (Accelerate has no fp16 "
                          "autocast or loss scaler on CPU); use precision.mixed=bf16 or no")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if cpu and distributed else []
    # DeepSpeed is initialised by `wrap` itself (Accelerate's plugin needs transformers and
    # is disabled on CPU), so Accelerate sets up a plain process group here.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a process may train then evaluate with other precisions
    saved = os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    try:
        accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                                  kwargs_handlers=handlers, cpu=cpu)
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


# ---------------------------------------------------------------------------------------------
# Wrapping
# ---------------------------------------------------------------------------------------------


def _fsdp2_shard(module: nn.Module, mixed_precision: str) -> nn.Module:
    """``fully_shard`` per block and the root; under bf16 the blocks' parameters are cast to
    bf16 for compute, except BatchNorm's.

    BatchNorm keeps fp32 affine parameters (and its fp32 running statistics): each BN module
    becomes its own FSDP unit with an fp32 policy (inputs cast to fp32 on entry), as in
    pytorch/torchtitan#674. A bf16 weight next to fp32 running buffers is what made
    ``batch_norm`` fail with "expected scalar type BFloat16 but found Float". fp16 shards in
    fp32 and relies on autocast plus Accelerate's loss scaler, so BN is fp32 there too.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if mixed_precision == "bf16" else None,
        reduce_dtype=torch.float32,
    )
    if mixed_precision == "bf16":
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        for norm in batch_norms(module):
            fully_shard(norm, mp_policy=fp32)
    for block in shard_units(module):
        fully_shard(block, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


def batch_norms(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm (and SyncBatchNorm) with parameters, in module order."""
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(True for _ in m.parameters())]


def shard_units(module: nn.Module) -> list[nn.Module]:
    """Sub-modules worth their own FSDP unit: ResNet stages, ViT blocks, MLP layers."""
    units = []
    for name, child in module.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("layer") and leaf[5:].isdigit():  # torchvision ResNet stages
            units.append(child)
        elif leaf.startswith("encoder_layer_"):  # torchvision ViT blocks
            units.append(child)
    return units


def wrap(accelerator, strategy: Strategy, query: nn.Module, key: nn.Module,
         make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], micro_batch: int,
         grad_clip: Optional[float] = None, *, sync_bn: bool = False, channels_last: bool = False,
         compile: bool = False):
    """Move to device and wrap for the strategy; returns (query, key, optimizer).

    ``make_optimizer`` receives the (possibly sharded) query module so that the optimizer
    holds the parameters the backend actually updates. ``sync_bn`` turns every batch norm of
    both encoders into SyncBatchNorm (global batch statistics: N processes then equal one, BN
    included); ``compile`` compiles both encoders in place (state-dict keys unchanged).
    """
    device = accelerator.device
    if sync_bn and accelerator.num_processes > 1:
        if device.type == "cpu":
            from mlcdist.config import ConfigError

            raise ConfigError("model.key_bn: sync needs CUDA (SyncBatchNorm has no CPU kernel); "
                              "use model.key_bn=shuffle on CPU")
        query = nn.SyncBatchNorm.convert_sync_batchnorm(query)
        key = nn.SyncBatchNorm.convert_sync_batchnorm(key)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    query.to(device, memory_format=memory_format)
    key.to(device, memory_format=memory_format)
    if compile:
        query.compile()
        key.compile()
    if strategy == Strategy.FSDP2:
        mp = accelerator.mixed_precision
        _fsdp2_shard(query, mp)
        _fsdp2_shard(key, mp)
        optimizer = accelerator.prepare_optimizer(make_optimizer(query))
        return query, key, optimizer
    if strategy == Strategy.DEEPSPEED:
        import deepspeed

        config = deepspeed_config(accelerator.mixed_precision, micro_batch,
                                  accelerator.gradient_accumulation_steps, grad_clip)
        engine, optimizer, _, _ = deepspeed.initialize(model=query, optimizer=make_optimizer(query),
                                                       config=config)
        return engine, key, optimizer
    optimizer = make_optimizer(query)
    query, optimizer = accelerator.prepare(query, optimizer)
    return query, key, optimizer


def backward_and_step(accelerator, strategy: Strategy, query: nn.Module, optimizer, loss: Tensor,
                      grad_clip: Optional[float]) -> None:
    """Backward, clip and step; the DeepSpeed engine does its own accumulation and clipping."""
    if strategy == Strategy.DEEPSPEED:
        query.backward(loss)
        query.step()
        return
    accelerator.backward(loss)  # divides by the accumulation steps
    if accelerator.sync_gradients and grad_clip:
        accelerator.clip_grad_norm_(query.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside DDP / DeepSpeed wrappers (FSDP2 modules are not wrapped)."""
    while hasattr(module, "module") and isinstance(getattr(module, "module"), nn.Module):
        module = module.module
    return module


# ---------------------------------------------------------------------------------------------
# Collectives (no gradient: keys and labels come from the momentum encoder and the data)
# ---------------------------------------------------------------------------------------------


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def all_gather_rows(x: Tensor) -> Tensor:
    """Concatenate equally sized row blocks from all ranks, in rank order."""
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_sum(x: Tensor) -> Tensor:
    _, size = world()
    if size == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


@torch.no_grad()
def shuffled_keys(encode: Callable[[Tensor], Tensor], views: Tensor, generator_seed: int) -> Tensor:
    """MoCo shuffle-BN: encode a random cross-rank permutation of the global key batch so the
    key encoder's batch-norm statistics come from other samples than the query's; returns the
    global keys in the original (rank-major) order."""
    rank, size = world()
    if size == 1:
        return encode(views)
    all_views = all_gather_rows(views)
    n = all_views.shape[0]
    gen = torch.Generator().manual_seed(generator_seed)
    perm = torch.randperm(n, generator=gen).to(views.device)  # same seed on every rank
    local = perm.view(size, -1)[rank]
    keys = all_gather_rows(encode(all_views[local]))
    out = torch.empty_like(keys)
    out[perm] = keys
    return out


# ---------------------------------------------------------------------------------------------
# EMA and state dicts across backends
# ---------------------------------------------------------------------------------------------


def _local(t: Tensor) -> Tensor:
    to_local = getattr(t, "to_local", None)  # FSDP2 DTensor: this rank's shard
    return to_local() if to_local is not None else t


@contextmanager
def ema_views(accelerator, strategy: Strategy, query: nn.Module,
              key: nn.Module) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
    """Aligned (key, query) parameter tensors for an in-place EMA update.

    FSDP2: the local shards of both (sharded identically). ZeRO-3: the query parameters are
    gathered for the duration (their ``.data`` is empty otherwise, and an update from it would
    be silently lost). Otherwise the parameters themselves.
    """
    q_params = [p for p in unwrap(query).parameters()]
    k_params = [p for p in key.parameters()]
    if len(q_params) != len(k_params):
        raise RuntimeError("key and query encoders have different parameter lists")
    if strategy == Strategy.DEEPSPEED and zero_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(q_params, modifier_rank=None):
            yield [p.data for p in k_params], [p.data for p in q_params]
        return
    if strategy == Strategy.FSDP2:
        _reshard(query)
        _reshard(key)  # the key encoder runs forward only, so nothing reshards it otherwise
        k_params = list(key.parameters())
        q_params = list(query.parameters())
    yield [_local(p.data) for p in k_params], [_local(p.data) for p in q_params]


def _reshard(module: nn.Module) -> None:
    for sub in module.modules():
        reshard = getattr(sub, "reshard", None)
        if reshard is not None:
            reshard()


def full_state_dict(accelerator, strategy: Strategy, module: nn.Module) -> dict[str, Tensor]:
    """An unsharded CPU state dict of ``module`` (collective: call on every rank)."""
    if strategy == Strategy.FSDP2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if strategy == Strategy.DEEPSPEED and isinstance(module, _deepspeed_engine_type()):
        params = list(unwrap(module).parameters())
        if zero_stage() == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return _cpu_copy(unwrap(module).state_dict())
        return _cpu_copy(unwrap(module).state_dict())
    return _cpu_copy(unwrap(module).state_dict())


def _cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in state.items()}


def load_full_state_dict(strategy: Strategy, module: nn.Module, state: dict[str, Tensor]) -> None:
    if strategy == Strategy.FSDP2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))
        return
    if strategy == Strategy.DEEPSPEED and zero_stage() == 3:
        import deepspeed

        params = list(unwrap(module).parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            unwrap(module).load_state_dict(state)
        return
    unwrap(module).load_state_dict(state)


def _deepspeed_engine_type():
    try:
        from deepspeed import DeepSpeedEngine

        return DeepSpeedEngine
    except ImportError:  # pragma: no cover
        return type(None)


def full_optimizer_state(strategy: Strategy, module: nn.Module, optimizer) -> Optional[dict]:
    """Unsharded optimizer state for DDP/FSDP2 (collective); None for DeepSpeed (saved by the
    engine's own sharded checkpoint)."""
    if strategy == Strategy.DEEPSPEED:
        return None
    if strategy == Strategy.FSDP2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(module, _inner_optimizer(optimizer),
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return _inner_optimizer(optimizer).state_dict()


def load_optimizer_state(strategy: Strategy, module: nn.Module, optimizer, state: dict) -> None:
    if strategy == Strategy.FSDP2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(module, _inner_optimizer(optimizer), state,
                                 options=StateDictOptions(full_state_dict=True))
        return
    _inner_optimizer(optimizer).load_state_dict(state)


def _inner_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer
