"""Wrapping the encoders for a backend, and the backward/step that goes with it.

FSDP2 is applied here with ``torch.distributed.fsdp.fully_shard`` rather than through
Accelerate's plugin, because the plugin silently falls back to DDP on CPU and because the key
encoder must be sharded exactly like the query encoder for a shard-by-shard EMA.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from mlcdist.errors import MlcdistError
from mlcdist.parallel.backend import Strategy, deepspeed_config


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
    units = []
    if mixed_precision == "bf16":
        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        for norm in batch_norms(module):
            units.append(fully_shard(norm, mp_policy=fp32))
    for block in shard_units(module):
        units.append(fully_shard(block, mp_policy=policy))
    units.append(fully_shard(module, mp_policy=policy))
    if _reduce_scatter_avg_sums():  # FSDP2 reduce-scatters its fp32 gradients with ReduceOp.AVG
        world = torch.distributed.get_world_size()
        for unit in units:
            unit.set_all_reduce_hook(lambda grad: grad.div_(world))
    return module


def _reduce_scatter_avg_sums() -> bool:
    """Whether the default group's ``reduce_scatter_tensor`` sums where ``ReduceOp.AVG`` is
    asked: gloo's does in torch 2.7 (the Docker image's; not in later releases), which leaves
    FSDP2's gradients world-size times the mean on CPU. One small collective finds out."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_backend() != "gloo":
        return False
    out = torch.zeros(1)
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # renamed
    reduce_scatter(out, torch.ones(dist.get_world_size()), op=dist.ReduceOp.AVG)
    return out.item() != 1.0


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
            raise MlcdistError("model.key_bn: sync needs CUDA (SyncBatchNorm has no CPU kernel); "
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

def prepare_replicated(accelerator, strategy: Strategy, model: nn.Module, optimizer, *, what: str):
    """``model`` and ``optimizer`` for a job that keeps a full replica per rank (one process or
    DDP); ``what`` names the recipe setting in the error for a sharded backend."""
    if strategy not in (Strategy.SINGLE, Strategy.DDP):
        raise MlcdistError(f"{what} runs on one process or DDP, not {strategy.value}; launch with "
                           "accelerate launch --config_file recipes/accelerate/ddp.yaml")
    return accelerator.prepare(model, optimizer)


def backward_and_step(accelerator, strategy: Strategy, query: nn.Module, optimizer, loss: Tensor,
                      grad_clip: Optional[float]) -> None:
    """Backward, clip and step; the DeepSpeed engine does its own accumulation and clipping."""
    if strategy == Strategy.DEEPSPEED:
        query.backward(loss)
        query.step()
        return
    accelerator.backward(loss)  # divides by the accumulation steps
    if not accelerator.sync_gradients:  # accumulating: Accelerate's step and zero_grad are no-ops
        return
    if grad_clip:
        accelerator.clip_grad_norm_(query.parameters(), grad_clip)
    # Without a loss scaler Accelerate's step is the inner step plus ~0.5 ms of per-call package
    # probing (is_lomo_available); a vector step is ~3 ms, so call the inner optimizer directly.
    inner = optimizer if getattr(optimizer, "scaler", None) is not None else inner_optimizer(optimizer)
    inner.step()
    inner.zero_grad(set_to_none=True)

def unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside DDP / DeepSpeed wrappers (FSDP2 modules are not wrapped)."""
    while hasattr(module, "module") and isinstance(getattr(module, "module"), nn.Module):
        module = module.module
    return module

def inner_optimizer(optimizer):
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` (else ``optimizer``)."""
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer
