"""Save and resume a run as a dict of stateful components.

The trainer hands :class:`RunState` its parts (each has ``state_dict`` / ``load_state_dict``)::

    {"model": ModuleState, "key": ModuleState, "optimizer": OptimizerState,
     "queue": LabelledKeyQueue, "scaler": ScalerState, "train": TrainState}

plus the per-rank RNG. Backend differences live in the adapters (``mlcdist/parallel/state.py``);
the folder layout, ``latest`` and keep-last-k in ``mlcdist/checkpoint.py``, which also names the
``state.pt`` keys that eval reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from mlcdist import checkpoint as ckpt
from mlcdist.errors import MlcdistError


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class TrainState:
    """Where the run is: optimizer steps taken, the epoch, and micro-batches consumed in it;
    ``loss`` is the last step's loss when the checkpoint was written (what a restart of a
    finished run reports; NaN in checkpoints written before it was kept)."""

    step: int = 0
    epoch: int = 0
    micro: int = 0
    loss: float = float("nan")

    def state_dict(self) -> dict[str, float]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.step, self.epoch, self.micro = int(state["step"]), int(state["epoch"]), int(state["micro"])
        self.loss = float(state.get("loss", float("nan")))


class ScalerState:
    """Accelerate's fp16 loss scaler (``{}`` when the run has none)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def state_dict(self) -> dict:
        scaler = self.accelerator.scaler
        return scaler.state_dict() if scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.accelerator.scaler is not None and state:
            self.accelerator.scaler.load_state_dict(state)


class RunState:
    """Writes and reads checkpoints of ``components`` under ``root`` (``RUN/checkpoints``).

    ``meta`` adds the keys eval needs (config, class count, ...; see ``checkpoint.STATE_KEYS``).
    Collective: every rank calls :meth:`save` and :meth:`load`; rank 0 writes ``state.pt``.
    """

    def __init__(self, root: Path, components: dict[str, Stateful], *, rank: int, world: int,
                 barrier: Callable[[], None], keep_last: int):
        self.root, self.components = root, components
        self.rank, self.world, self.barrier, self.keep_last = rank, world, barrier, keep_last

    def save(self, step: int, meta: dict[str, Any]) -> Path:
        states = {name: part.state_dict() for name, part in self.components.items()}  # collective
        if self.rank == 0:
            ckpt.staging_dir(self.root, step)
        self.barrier()
        folder = ckpt.staging_path(self.root, step)
        for part in self.components.values():
            save_sharded = getattr(part, "save_sharded", None)
            if save_sharded is not None:
                save_sharded(folder)  # DeepSpeed's engine checkpoint, every rank
        ckpt.save_file(ckpt.rng_state(), folder / ckpt.rng_file(self.rank))
        if self.rank == 0:
            counters = states.pop("train")
            ckpt.save_file({**states, "counters": counters, "world_size": self.world, **meta},
                           folder / ckpt.STATE_FILE)
        self.barrier()
        final = self.root / ckpt.checkpoint_name(step)
        if self.rank == 0:
            final = ckpt.publish(self.root, step, self.keep_last)
        self.barrier()
        return final

    def load(self, folder: Path) -> None:
        state = ckpt.load_state(folder)
        if state["world_size"] != self.world:
            raise MlcdistError(
                f"{folder}: saved with {state['world_size']} processes, resuming with {self.world}; "
                "the data order would differ, so exact resume needs the same process count")
        state = {**state, "train": state["counters"]}
        for name, part in self.components.items():
            part.load_state_dict(state[name])
            load_sharded = getattr(part, "load_sharded", None)
            if load_sharded is not None:
                load_sharded(folder)
        rng = folder / ckpt.rng_file(self.rank)
        if rng.exists():
            ckpt.set_rng_state(ckpt.load_file(rng))

    def latest(self, resume: Optional[str]) -> Optional[Path]:
        """The folder to resume from (``checkpoint.resume``: ``auto``, a path or None); a
        fall-back past a cut-off ``state.pt`` leaves its warning in :attr:`warnings`."""
        self.warnings: list[str] = []
        return ckpt.find_resume(self.root, resume, warn=self.warnings.append)

    def has(self, step: int) -> bool:
        return (self.root / ckpt.checkpoint_name(step)).exists()
