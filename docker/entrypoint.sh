#!/bin/bash
# The image's entry point (Dockerfile ENTRYPOINT), run in /workspace.
#
#   docker run mlcdist                 the demo (also `docker run mlcdist demo`): no data needed.
#                                      It makes the digits shards in /workspace/shards/digits-vec
#                                      unless they are there, pretrains (runs/demo), probes the
#                                      encoder and a random one, and prints both side by side.
#   docker run mlcdist ARGS...         `accelerate launch ARGS...`, e.g.
#                                      --config_file recipes/accelerate/ddp.yaml -m mlcdist.train RECIPE
#
# The launcher replaces this shell (exec), so it is PID 1 and receives the SIGTERM of
# `docker stop` or Kubernetes itself. The demo's steps run one after another; a SIGTERM or
# Ctrl-C is passed on to the running step as SIGTERM (training checkpoints and stops; run the
# demo again on the same volumes to resume).
set -euo pipefail

# `docker run --user UID` with a uid that the image's passwd lacks gets HOME=/, which it cannot
# write: the caches under ~ (DeepSpeed's and torch's compiled ops, Triton, matplotlib) need one.
if [ ! -w "${HOME:-/}" ]; then
    export HOME=/tmp
fi

if [ "$#" -gt 0 ] && [ "$1" != "demo" ]; then
    exec accelerate launch "$@"
fi

child=""
forward() {
    if [ -n "$child" ]; then
        kill -s "$1" "$child" 2>/dev/null || true
    fi
}
# Ctrl-C too goes on as SIGTERM: a background step of a script ignores SIGINT
trap 'forward TERM' TERM INT

step() {
    echo "+ $*" >&2
    "$@" &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do  # a forwarded signal interrupted wait: wait again
        rc=0
        wait "$child" || rc=$?
    done
    child=""
    return "$rc"
}

shards=shards/digits-vec
if [ ! -f "$shards/train/dataset.json" ] || [ ! -f "$shards/test/dataset.json" ]; then
    step mlcdist-shards digits --vectors --out "$shards" --no-progress
fi
step mlcdist-train recipes/demo.yaml
step mlcdist-eval runs/demo --recipe recipes/eval/demo.yaml
step mlcdist-eval runs/demo --recipe recipes/eval/demo.yaml --random-init
step mlcdist-eval compare runs/demo/eval/linear runs/demo/eval/linear-random
