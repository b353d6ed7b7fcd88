# mlcdist on a CUDA PyTorch base image (see docs/clusters.md#docker).
#
#   docker build -t mlcdist .
#   docker run --gpus all mlcdist          # the demo: makes its own shards, trains, probes
#   docker run --gpus all --ipc=host -v "$PWD/shards:/workspace/shards" -v "$PWD/runs:/workspace/runs" \
#     mlcdist --config_file recipes/accelerate/ddp.yaml -m mlcdist.train recipes/coco.yaml
#
# The entry point is docker/entrypoint.sh: with no arguments (or `demo`) it runs the digits demo
# without any mounted data; otherwise its arguments go to `accelerate launch`: the launcher's
# options, then `-m mlcdist.train RECIPE [key=value ...]`. Shards and run folders are volumes;
# the recipes are baked in at /workspace/recipes (mount your own over it to change them without
# a rebuild). Bind mounts keep the host's ownership: add `--user "$(id -u):$(id -g)"` when the
# host folders are not writable by uid 1000.

# torch 2.7.1 + CUDA 12.8 (Hopper and Blackwell); mlcdist needs torch >= 2.6 for FSDP2's
# public fully_shard. Another pytorch/pytorch *-runtime tag needs the torch and torchvision
# pins of docker/constraints.txt changed with it (the build stops when they differ).
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The -runtime base has no C/C++ compiler, which mlcdist needs at run time for torch.compile
# (model.compile: true; Inductor and Triton build their kernels and launchers) and for DeepSpeed
# without GPUs (its shared-memory comm op is a C++ extension built on first use; see README.md),
# pytorch/pytorch#116696.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

# A non-root user owns the workspace and the mount points, so named volumes start writable.
RUN useradd --create-home --uid 1000 --shell /bin/bash mlcdist \
    && mkdir -p /workspace/shards /workspace/runs \
    && chown -R mlcdist:mlcdist /workspace

WORKDIR /opt/mlcdist
# Only what the package build needs (tests, docs and data stay out; see .dockerignore).
# The constraints pin mlcdist's dependencies against the image's torch, so pip keeps it;
# scikit-learn is for the digits demo (`mlcdist-shards digits --vectors`).
COPY docker/constraints.txt docker/check_pins.py ./docker/
COPY pyproject.toml README.md ./
COPY mlcdist ./mlcdist
COPY tools ./tools
RUN python docker/check_pins.py \
    && pip install --no-cache-dir -c docker/constraints.txt . scikit-learn \
    && python docker/check_pins.py \
    && python -c "import tools.make_shards" \
    && cd / && mlcdist-shards --help > /dev/null && python -c "import mlcdist, torch; print(mlcdist.__file__)"

COPY docker/entrypoint.sh /usr/local/bin/mlcdist-entrypoint
RUN chmod 0755 /usr/local/bin/mlcdist-entrypoint

WORKDIR /workspace
COPY --chown=mlcdist:mlcdist recipes ./recipes

# Numeric, so Kubernetes' runAsNonRoot can verify it; uid 1000 is the user `mlcdist` above.
USER 1000:1000
VOLUME ["/workspace/shards", "/workspace/runs"]

ENTRYPOINT ["/usr/local/bin/mlcdist-entrypoint"]
CMD ["demo"]
