"""Backend x precision x architecture matrix: 2 real Trainer steps per combination.

    python bench/precision_matrix.py [--nproc N] [--backends ddp,fsdp2,zero1,zero2,zero3]
                                     [--combos resnet18:no,resnet18:bf16,vit:fp16,...] [--json FILE]

One ``torchrun`` launch per backend runs ``tests/support/dist_precision_worker.py`` over every
combination (process start and DeepSpeed init dominate). On CUDA the worker uses the GPU
(``--nproc 1`` on one GPU); without one, CPU/gloo (``ACCELERATE_USE_CPU=true``). Prints a
table and writes, per backend and combination: step losses, seconds, the largest relative L2
weight difference against the same backend's fp32 run, and (fp32) against DDP's.
``tests/e2e/test_precision_matrix.py`` asserts on the same results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "support" / "dist_precision_worker.py"

BACKENDS = {
    "ddp": {},
    "fsdp2": {"ACCELERATE_USE_FSDP": "true"},
    "zero1": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"},
    "zero2": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
    "zero3": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
}


def launch(backend: str, out: Path, combos: list[str], nproc: int = 2, cpu: bool = True,
           timeout: int = 900) -> dict:
    """One torchrun of the worker under ``backend``; returns {combo: result or {"error"}}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **BACKENDS[backend]}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    else:
        env.pop("ACCELERATE_USE_CPU", None)
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        if key not in BACKENDS[backend]:
            env.pop(key, None)
    port = 29700 + (os.getpid() * 7 + sum(map(ord, backend))) % 250
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(port), str(WORKER), str(out), *combos]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout[-1500:] + proc.stderr[-1500:]).strip().replace("\n", " | ")
        return {c: {"error": f"launch failed (rc {proc.returncode}): {tail}"} for c in combos}
    return torch.load(out, weights_only=True)


def weight_rel(a: dict, b: dict) -> float:
    """Relative L2 distance of all parameters of the query and key encoders together,
    ``sqrt(sum ||a - b||^2) / sqrt(sum ||b||^2)`` (zero-initialised biases make per-tensor
    ratios meaningless after two steps)."""
    num = den = 0.0
    for part in ("query", "key"):
        for name, ref in b[part].items():
            if ref.is_floating_point() and "running_" not in name:  # parameters, not BN statistics
                num += float((a[part][name].double() - ref.double()).square().sum())
                den += float(ref.double().square().sum())
    return (num / max(den, 1e-30)) ** 0.5


def summary(results: dict[str, dict]) -> dict:
    """JSON-able figures: losses, seconds, weight differences vs fp32 and vs DDP."""
    out: dict = {}
    for backend, res in results.items():
        out[backend] = {}
        for combo, r in res.items():
            if "error" in r:
                out[backend][combo] = {"error": r["error"]}
                continue
            ref = res.get(combo.split(":")[0] + ":no", {})
            ddp = results.get("ddp", {}).get(combo, {})
            out[backend][combo] = {
                "losses": r["losses"].tolist(), "finite": bool(r["losses"].isfinite().all()),
                "seconds": round(r["seconds"], 2), "world": r["world"],
                "weight_rel_vs_fp32": (weight_rel(r, ref) if "query" in ref and ref is not r else None),
                "weight_rel_vs_ddp": (weight_rel(r, ddp) if "query" in ddp and backend != "ddp" else None),
            }
    return out


def table(figures: dict) -> str:
    rows = ["| backend | combination | loss step 1 | loss step 2 | weights vs fp32 | weights vs DDP | s |",
            "|---|---|---|---|---|---|---|"]

    def fmt(x: Optional[float]) -> str:
        return "-" if x is None else f"{x:.1e}"

    for backend, res in figures.items():
        for combo, r in res.items():
            if "error" in r:
                rows.append(f"| {backend} | {combo} | error: {r['error'][:100]} | | | | |")
                continue
            rows.append(f"| {backend} | {combo} | {r['losses'][0]:.4f} | {r['losses'][1]:.4f} | "
                        f"{fmt(r['weight_rel_vs_fp32'])} | {fmt(r['weight_rel_vs_ddp'])} | {r['seconds']:.1f} |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--nproc", type=int, default=1 if cuda else 2)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    default = "resnet18,resnet50,vit" if cuda else "resnet18,vit"
    parser.add_argument("--combos", default=",".join(f"{a}:{p}" for a in default.split(",")
                                                     for p in (["no", "bf16", "fp16"] if cuda else ["no", "bf16"])))
    parser.add_argument("--workdir", default="/tmp/mlcdist-precision-matrix")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    combos = args.combos.split(",")
    results = {b: launch(b, work / f"{b}.pt", combos, args.nproc, cpu=not cuda) for b in args.backends.split(",")}
    figures = summary(results)
    print(table(figures))
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "nproc": args.nproc, "matrix": figures}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
