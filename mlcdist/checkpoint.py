"""Atomic checkpoints with keep-last-k and exact resume; the one owner of the ``state.pt`` format.

Layout of ``RUN_DIR/checkpoints/``::

    step-00001200/            one folder per checkpoint, written as .tmp-step-... then renamed
        state.pt              STATE_KEYS below (rank 0)
        rng-rank0.pt ...      each rank's RNG states
        deepspeed/            the engine's own (sharded) checkpoint, DeepSpeed runs only
    latest                    text file naming the newest complete folder, replaced atomically

A crash mid-save leaves only a ``.tmp-*`` folder behind; ``latest`` still names the last good
checkpoint. Everything loads with ``torch.load(weights_only=True)``.

``state.pt`` holds (the trainer writes it, eval reads it, both through this module):

==============  ==============================================================================
key             value
==============  ==============================================================================
model           the query encoder's full state dict (``backbone.*`` + ``head.*``, or
                ``backbone.*`` + ``classifier.*`` for a supervised baseline)
key             the momentum key encoder's state dict (contrastive runs)
optimizer       full optimizer state (None under DeepSpeed: its engine folder holds it)
queue           the labelled key queue; ``scaler``: fp16 loss scaler (``{}`` if none)
counters        ``{"step", "epoch", "micro", "loss"}`` (``loss``: the last step's, may be absent
                in older checkpoints); ``world_size``: processes of the run
config          the resolved recipe as YAML text (architecture, loss, data, ...)
num_classes     classes of the training set; ``feature_dim``: vector width (None for images)
class_names     the training set's class names; ``dataset``: its name (both absent in
                checkpoints written before they were added: eval then reads the pretraining
                ``data.train`` index when it is there)
==============  ==============================================================================
"""

from __future__ import annotations

import errno
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from mlcdist.errors import MlcdistError
from mlcdist.fileio import atomic_write, rename_into_place, write_text

LATEST = "latest"
STATE_FILE = "state.pt"
REQUIRED_KEYS = ("model", "config", "num_classes", "feature_dim")  # what eval needs


class CheckpointError(MlcdistError):
    """A checkpoint location that holds no readable mlcdist checkpoint; names the file."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def staging_path(root: Path, step: int) -> Path:
    """Where checkpoint ``step`` is assembled before :func:`publish` renames it into place."""
    return root / f".tmp-{checkpoint_name(step)}"


def staging_dir(root: Path, step: int) -> Path:
    """A fresh temporary folder for checkpoint ``step`` (call on rank 0, then barrier)."""
    tmp = staging_path(root, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save_file(obj: Any, path: Path) -> None:
    """``torch.save`` through the atomic writer (``fileio.atomic_write``: partial file, fsync,
    rename); a failed write (full disk, quota, file-size limit) raises a :class:`CheckpointError`
    naming the file, the cause and the free space (the partial file is removed and the published
    checkpoints are untouched)."""
    try:
        with atomic_write(path) as stream:  # a Python file: torch's writer keeps the OSError (errno)
            torch.save(obj, stream)
    except (OSError, RuntimeError) as err:
        raise CheckpointError(write_failure(path, err)) from None


_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
         errno.EFBIG: "the file exceeds the file system's or the process's file-size limit (ulimit -f)"}


def write_failure(path: Path, err: BaseException) -> str:
    """``PATH: could not write the checkpoint: CAUSE; FREE free on FOLDER; what is still there``."""
    cause = err
    while cause is not None and not isinstance(cause, OSError):  # torch wraps the write's OSError
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno is not None:
        reason = (f"{_FULL.get(cause.errno, 'the write failed')} "
                  f"({errno.errorcode.get(cause.errno, cause.errno)}: {cause.strerror})")
    else:  # torch's own writer: "unexpected pos 48384 vs 48304" means a short write
        reason = f"the write failed, usually because the disk is full (torch: {str(err).strip()})"
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**30:.2f} GiB free on {path.parent}"
    except OSError:
        free = f"free space of {path.parent} unknown"
    return f"{path}: could not write the checkpoint: {reason}; {free}; {previous_hint(path)}"


def previous_hint(path: Path) -> str:
    """What a failed save leaves: the checkpoint ``latest`` names (``path`` is inside a staging folder)."""
    pointer = path.parent.parent / LATEST
    if pointer.is_file():
        return (f"the previous checkpoint {pointer.parent / pointer.read_text().strip()} is intact and "
                f"{pointer} still names it; free some space (or lower checkpoint.keep_last) and resume")
    return "no checkpoint was published yet; free some space and start again"


def publish(root: Path, step: int, keep_last: int) -> Path:
    """Rename the staged folder into place, point ``latest`` at it, prune old ones (rank 0)."""
    final = root / checkpoint_name(step)
    if final.exists():
        shutil.rmtree(final)
    rename_into_place(staging_path(root, step), final)
    write_text(root / LATEST, final.name + "\n")
    complete = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_resume(root: Path, resume: Optional[str],
                warn: Callable[[str], None] = lambda message: None) -> Optional[Path]:
    """``auto``: the folder ``latest`` names (None on a fresh run; if its ``state.pt`` is cut
    off, the previous complete checkpoint, after ``warn``); else an explicit path."""
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / STATE_FILE).exists():
            raise CheckpointError(f"checkpoint.resume: {path} holds no {STATE_FILE}; pass a "
                                    f"checkpoint folder such as {root / checkpoint_name(1000)}")
        if not is_complete(path / STATE_FILE):
            raise CheckpointError(f"{path / STATE_FILE}: truncated or unreadable; "
                                  f"{offer_previous(path)} as checkpoint.resume")
        return path
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not (path / STATE_FILE).exists():
        raise CheckpointError(f"{pointer} names {path}, which holds no {STATE_FILE}; "
                                "delete the pointer or set checkpoint.resume to a good folder")
    if is_complete(path / STATE_FILE):
        return path
    previous = previous_complete(path)
    if previous is None:
        raise CheckpointError(f"{path / STATE_FILE} (named by {pointer}): truncated or unreadable, and "
                              "no complete checkpoint precedes it; set checkpoint.resume=null to start again")
    warn(f"{path / STATE_FILE} is truncated or unreadable; resuming from the previous complete "
         f"checkpoint {previous} (delete {path} to silence this warning)")
    return previous


def is_complete(state_file: Path) -> bool:
    """True when ``state_file`` is a whole torch zip archive: a cut-off write lacks the zip
    directory at the end (read from the tail only, so cheap for any checkpoint size)."""
    try:
        with zipfile.ZipFile(state_file) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def previous_complete(folder: Path) -> Optional[Path]:
    """The newest ``step-*`` sibling older than ``folder`` whose ``state.pt`` is complete."""
    older = sorted(p for p in folder.parent.glob("step-*") if p.name < folder.name)
    return next((p for p in reversed(older) if is_complete(p / STATE_FILE)), None)


def offer_previous(folder: Path) -> str:
    previous = previous_complete(folder) if folder.name.startswith("step-") else None
    if previous is None:
        return f"no complete checkpoint precedes it; pass a {STATE_FILE} written by python -m mlcdist.train"
    return f"the previous complete checkpoint is {previous}; pass that folder"


def load_state(folder: Path) -> dict[str, Any]:
    """``folder/state.pt`` for a resume; a cut-off or corrupt file is a :class:`CheckpointError`."""
    path = folder / STATE_FILE
    try:
        return load_file(path)
    except (OSError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: truncated or unreadable ({type(err).__name__}: {err}); "
                              f"{offer_previous(folder)} as checkpoint.resume") from None


def load_file(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def resolve(location: str | Path) -> Path:
    """A ``state.pt`` file, a ``step-N`` folder, a ``checkpoints`` folder or a run folder (the
    latter two through their ``latest`` pointer, else the newest ``step-*``) -> the state.pt."""
    path = Path(location)
    if path.is_file():
        return path
    if (path / STATE_FILE).is_file():
        return path / STATE_FILE
    for root in (path, path / "checkpoints"):
        pointer = root / LATEST
        if pointer.is_file():
            named = root / pointer.read_text().strip() / STATE_FILE
            if named.is_file():
                return named
            raise CheckpointError(f"{pointer} names {named.parent}, which holds no {STATE_FILE}; "
                                  "pass a step-NNNNNNNN folder explicitly")
        steps = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
        if steps:
            return steps[-1] / STATE_FILE
    raise CheckpointError(
        f"{location}: no checkpoint found; pass a run folder, RUN/checkpoints, "
        f"RUN/checkpoints/step-NNNNNNNN or its {STATE_FILE} (written by python -m mlcdist.train), "
        "or 'random' for a randomly initialised encoder")


def read(path: Path) -> dict[str, Any]:
    """``state.pt`` as a dict with :data:`REQUIRED_KEYS` (memory-mapped, ``weights_only``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"{path}: truncated or unreadable, not a readable torch checkpoint "
                              f"({type(err).__name__}: {err}); {offer_previous(path.parent)}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not an mlcdist pretraining checkpoint (missing {missing}); "
                              f"pass a {STATE_FILE} written by python -m mlcdist.train")
    return state
