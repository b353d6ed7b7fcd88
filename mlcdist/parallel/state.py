"""State across backends: sharded EMA views, full (unsharded) state dicts, optimizer state
and the DeepSpeed engine's own checkpoint, behind two stateful adapters the trainer saves
like any other component (:class:`ModuleState`, :class:`OptimizerState`).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from torch import Tensor, nn

from mlcdist.parallel.backend import Strategy, zero_stage
from mlcdist.parallel.wrap import inner_optimizer, unwrap


def local_shard(t: Tensor) -> Tensor:
    """The part of ``t`` this rank holds: a DeepSpeed ZeRO-3 partition, an FSDP2 DTensor's
    local shard, else ``t`` itself."""
    partition = getattr(t, "ds_tensor", None)
    if partition is not None:
        return partition
    to_local = getattr(t, "to_local", None)
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
    yield [local_shard(p.data) for p in k_params], [local_shard(p.data) for p in q_params]

class EmaViews:
    """:func:`ema_views` for one (query, key) pair. Single-process and DDP parameters are plain
    tensors that are updated in place and never replaced, so their aligned lists are built once
    (rebuilding them every step was 2% of a vector step); FSDP2 and DeepSpeed go through
    :func:`ema_views` every time."""

    def __init__(self, accelerator, strategy: Strategy, query: nn.Module, key: nn.Module):
        self.accelerator, self.strategy, self.query, self.key = accelerator, strategy, query, key
        self._fixed = None
        if strategy in (Strategy.SINGLE, Strategy.DDP):
            with ema_views(accelerator, strategy, query, key) as (k_params, q_params):
                self._fixed = ([p.detach() for p in k_params], [p.detach() for p in q_params])

    @contextmanager
    def __call__(self) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
        if self._fixed is not None:
            yield self._fixed
            return
        with ema_views(self.accelerator, self.strategy, self.query, self.key) as views:
            yield views


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

        return get_optimizer_state_dict(module, inner_optimizer(optimizer),
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return inner_optimizer(optimizer).state_dict()

def load_optimizer_state(strategy: Strategy, module: nn.Module, optimizer, state: dict) -> None:
    if strategy == Strategy.FSDP2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(module, inner_optimizer(optimizer), state,
                                 options=StateDictOptions(full_state_dict=True))
        return
    inner_optimizer(optimizer).load_state_dict(state)


class ModuleState:
    """A wrapped module as a stateful component: full CPU state dicts in and out (collective:
    every rank calls both)."""

    def __init__(self, accelerator, strategy: Strategy, module: nn.Module):
        self.accelerator, self.strategy, self.module = accelerator, strategy, module

    def state_dict(self) -> dict[str, Tensor]:
        return full_state_dict(self.accelerator, self.strategy, self.module)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        load_full_state_dict(self.strategy, self.module, state)


class OptimizerState:
    """The query optimizer as a stateful component.

    DDP/FSDP2: a full state dict in ``state.pt``. DeepSpeed keeps optimizer state sharded in
    the engine: ``state_dict()`` is then ``None`` and :meth:`save_sharded` / :meth:`load_sharded`
    write and read the engine's own checkpoint in the checkpoint folder (every rank)."""

    ENGINE_DIR, ENGINE_TAG = "deepspeed", "engine"

    def __init__(self, strategy: Strategy, module: nn.Module, optimizer):
        self.strategy, self.module, self.optimizer = strategy, module, optimizer

    def state_dict(self) -> Optional[dict]:
        return full_optimizer_state(self.strategy, self.module, self.optimizer)

    def load_state_dict(self, state: Optional[dict]) -> None:
        if self.strategy != Strategy.DEEPSPEED:
            load_optimizer_state(self.strategy, self.module, self.optimizer, state)

    def save_sharded(self, folder: Path) -> None:
        if self.strategy == Strategy.DEEPSPEED:
            self.module.save_checkpoint(str(folder / self.ENGINE_DIR), tag=self.ENGINE_TAG)

    def load_sharded(self, folder: Path) -> None:
        if self.strategy == Strategy.DEEPSPEED:
            self.module.load_checkpoint(str(folder / self.ENGINE_DIR), tag=self.ENGINE_TAG)
