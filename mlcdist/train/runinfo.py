"""``run_info.json``: what produced a run folder, and the end-of-training summary.

Written by the main process when training starts (command line, overrides, git commit and
dirty flag, package versions, world size, backend, launcher, host count, start time) and
completed when it ends (end time, final loss, wall time, samples/s, peak memory). A restart of
the same run keeps the earlier sessions under ``"previous"``. Nothing here may fail a run: a
missing git, a non-git install or an unknown package gives ``None``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Sequence

RUN_INFO = "run_info.json"
PACKAGES = ("torch", "torchvision", "accelerate", "mlcdist", "deepspeed")


def git_state(where: Optional[Path] = None) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout holding the mlcdist code (``None`` for each when
    it is not a git checkout, or git is missing)."""
    where = where or Path(__file__).resolve().parents[2]

    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, Optional[str]]:
    """Installed versions (from package metadata: nothing is imported); ``None`` when absent."""
    versions: dict[str, Optional[str]] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def launcher(env: Optional[dict] = None) -> str:
    """How the process was started: ``accelerate`` (``accelerate launch`` exports the mixed
    precision), ``torchrun`` (torch elastic), ``slurm`` (``srun`` without either), or ``plain``."""
    env = os.environ if env is None else env
    if "ACCELERATE_MIXED_PRECISION" in env:
        return "accelerate"
    if "TORCHELASTIC_RUN_ID" in env or "GROUP_WORLD_SIZE" in env:
        return "torchrun"
    if "SLURM_PROCID" in env or "SLURM_JOB_ID" in env:
        return "slurm"
    return "plain"


def host_count(world: int, env: Optional[dict] = None) -> int:
    """Machines in the job: world size over processes per machine (torchrun's
    ``LOCAL_WORLD_SIZE``), else SLURM's node count, else 1."""
    env = os.environ if env is None else env
    local = int(env.get("LOCAL_WORLD_SIZE", "0") or 0)
    if local > 0:
        return max(1, -(-world // local))
    return max(1, int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1))


def iso_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def peak_memory() -> tuple[float, str]:
    """Peak memory of this process in GiB and what was measured: CUDA ``max_memory_allocated``
    on a GPU, else the process's maximum resident set size."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30, "CUDA max allocated"
    import resource

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    scale = 2**30 if sys.platform == "darwin" else 2**20
    return rss_kib / scale, "max RSS"


def command_line(args: Optional[Sequence[str]]) -> str:
    """``python -m mlcdist.train ARGS`` for the train command's arguments; this process's own
    command line when ``args`` is None (a Trainer built from Python)."""
    if args is not None:
        return shlex.join(["python", "-m", "mlcdist.train", *args])
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:  # python -m PACKAGE: argv[0] is the file, not the name
        return shlex.join(["python", "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def start_record(*, args: Optional[Sequence[str]], recipe: Optional[str], overrides: Sequence[str],
                 world: int, backend: str, start_step: int, env: Optional[dict] = None) -> dict[str, Any]:
    """The start-of-training part of ``run_info.json``; ``args``: the train command's arguments."""
    return {
        "command": command_line(args), "recipe": recipe, "overrides": list(overrides),
        "git": git_state(), "packages": package_versions(), "python": platform.python_version(),
        "world_size": world, "backend": backend, "launcher": launcher(env),
        "hosts": host_count(world, env), "host": platform.node(),
        "start_time": iso_time(time.time()), "start_step": start_step, "end_time": None,
    }


def read_run_info(run_dir: Path) -> Optional[dict]:
    """The run's record, or None when it has none (or it is unreadable)."""
    try:
        return json.loads((Path(run_dir) / RUN_INFO).read_text())
    except (OSError, ValueError):
        return None


def write_run_info(run_dir: Path, record: dict) -> None:
    """Write atomically (a crash never leaves half a file)."""
    path = Path(run_dir) / RUN_INFO
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def begin(run_dir: Path, record: dict) -> dict:
    """Start a session: earlier sessions of the same run folder move under ``previous``."""
    old = read_run_info(run_dir)
    if old is not None:
        previous = old.pop("previous", [])
        record["previous"] = previous + [{k: old.get(k) for k in
                                          ("command", "start_time", "end_time", "start_step", "summary")}]
    write_run_info(run_dir, record)
    return record


def summary_line(summary: dict) -> str:
    """The end-of-training line: final loss, wall time, samples/s, peak memory."""
    from mlcdist.progress import format_duration

    loss = summary.get("final_loss")
    loss_text = "unknown" if loss is None else f"{loss:.4f}"
    return (f"step {summary['step']}/{summary['total_steps']}, final loss {loss_text}, "
            f"wall {format_duration(summary['wall_s'])}, {summary['samples_per_s']:.1f} samples/s, "
            f"peak memory {summary['peak_mem_gib']:.2f} GiB ({summary['peak_mem_kind']})")


def logged_loss(run_dir: Path, step: int) -> Optional[float]:
    """The loss ``metrics.jsonl`` logged at ``step`` (the newest such record), else None."""
    loss = None
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step") == step and "loss" in record:
            loss = float(record["loss"])
    return loss
