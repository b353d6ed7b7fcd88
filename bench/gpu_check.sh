#!/usr/bin/env bash
# One GPU check (issue 11, item 4): everything a lent H100/H200 should tell us, in < 8 minutes,
# with nothing downloaded. Run from the repository root:
#
#     bash bench/gpu_check.sh [OUT.json]          # default: $OUT/gpu_check.json, else ./gpu_check.json
#     bash bench/gpu_check.sh --tiny [OUT.json]   # CPU smoke run of the same parts (seconds to minutes)
#
# Parts (each time-capped; a failing part is recorded in the JSON and the others still run):
#   1. precision matrix: DDP / FSDP2 / ZeRO-1/2/3 x precision.mixed no / bf16 / fp16 x ResNet-18,
#      ResNet-50, small ViT (BN projection head), 2 Trainer steps each, world size 1 per backend
#      (bench/precision_matrix.py -> tests/support/dist_precision_worker.py)
#   2. about one minute of the image demo (recipes/demo_image.yaml, digits mosaics as JPEG shards
#      made locally by tools.make_shards, bf16), capped by schedule.max_steps and a timeout
#   3. bench/step.py at ResNet-50, 224 px, batch 128, queue 65,536, 365 classes
# The JSON holds every figure: {"meta", "precision_matrix", "demo_image", "step", "parts"}.
set -u -o pipefail

TINY=0
if [[ "${1:-}" == "--tiny" ]]; then TINY=1; shift; fi
JSON="${1:-${OUT:-.}/gpu_check.json}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
WORK="$(mktemp -d -t mlcdist-gpu-check-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$JSON")"
declare -A STATUS SECONDS_TAKEN

part() {  # part NAME TIMEOUT_S CMD...: runs, logs to $WORK/NAME.log, records rc and seconds
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  STATUS[$name]=$rc
  SECONDS_TAKEN[$name]=$((SECONDS - start))
  tail -n 25 "$WORK/$name.log"
  echo "== $name: rc $rc in ${SECONDS_TAKEN[$name]} s"
}

if [[ $TINY == 1 ]]; then
  export ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1
  MATRIX_ARGS=(--nproc 1 --backends ddp,fsdp2,zero2 --combos resnet18:no,resnet18:bf16,vit:bf16)
  DEMO_STEPS=3; DEMO_LIMIT=300; DEMO_EXTRA=(precision.mixed=no data.batch_size=16)  # CPU bf16 is slow
  STEP_ARGS=(--arch resnet18 --batch 4 --image-size 32 --steps 2 --warmup 1 --queue 64 --classes 12
             --make-shards 24)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  MATRIX_ARGS=(--nproc 1)  # every backend; resnet18, resnet50, vit x no, bf16, fp16 on CUDA
  DEMO_STEPS="${DEMO_STEPS:-3000}"; DEMO_LIMIT=75  # whichever comes first: ~1 minute of training
  DEMO_EXTRA=(precision.mixed=bf16)
  STEP_ARGS=(--arch resnet50 --batch 128 --image-size 224 --steps 30 --warmup 10 --queue 65536
             --classes 365 --make-shards 5120)
fi

# 1. precision matrix
part precision_matrix 180 "$PY" bench/precision_matrix.py "${MATRIX_ARGS[@]}" \
  --workdir "$WORK/matrix" --json "$WORK/precision_matrix.json"

# 2. the image demo for about a minute (shards made here from scikit-learn's bundled digits)
part demo_shards 60 "$PY" -m tools.make_shards digits --size 32 --train 5000 --out "$WORK/digits" --no-progress
part demo_image "$DEMO_LIMIT" "$PY" -m mlcdist.train recipes/demo_image.yaml \
  data.train="$WORK/digits/train" data.test="$WORK/digits/test" "${DEMO_EXTRA[@]}" \
  schedule.max_steps="$DEMO_STEPS" logging.run_dir="$WORK/demo" logging.every_steps=20 \
  logging.progress=false

# 3. step throughput at the issue's setting
part step 180 "$PY" bench/step.py "${STEP_ARGS[@]}" --json "$WORK/step.json"

STATUS_JSON="{"; for k in "${!STATUS[@]}"; do
  STATUS_JSON+="\"$k\": {\"rc\": ${STATUS[$k]}, \"seconds\": ${SECONDS_TAKEN[$k]}},"; done
STATUS_JSON="${STATUS_JSON%,}}"
"$PY" - "$WORK" "$JSON" "$TINY" "$STATUS_JSON" <<'EOF'
import datetime, json, sys
from pathlib import Path

import torch

work, out, tiny, parts = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", json.loads(sys.argv[4])


def load(name):
    path = work / name
    return json.loads(path.read_text()) if path.exists() else None


demo = None
metrics = work / "demo" / "metrics.jsonl"
if metrics.exists():
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if rows:
        speeds = [r["samples_per_s"] for r in rows[1:] or rows if "samples_per_s" in r]
        demo = {"steps": rows[-1]["step"], "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
                "median_samples_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,
                "gpu_mem_gib": rows[-1].get("gpu_mem_gib"), "log": rows}
report = {
    "meta": {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
             "torch": torch.__version__, "cuda": torch.version.cuda, "tiny": tiny},
    "parts": parts,
    "precision_matrix": load("precision_matrix.json"),
    "demo_image": demo,
    "step": load("step.json"),
}
out.write_text(json.dumps(report, indent=2))
print(f"gpu_check: wrote {out}; part exit codes "
      + ", ".join(f"{k} {v['rc']} ({v['seconds']} s)" for k, v in parts.items()))
EOF
