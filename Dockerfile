# mlcdist on a CUDA PyTorch base image (see docs/clusters.md).
#
#   docker build -t mlcdist .
#   docker run --gpus all --ipc=host -v "$PWD/shards:/workspace/shards" -v "$PWD/runs:/workspace/runs" \
#     mlcdist --config_file recipes/accelerate/ddp.yaml -m mlcdist.train recipes/coco.yaml
#
# The entry point is `accelerate launch`: its arguments are the launcher's options, then
# `-m mlcdist.train RECIPE [key=value ...]`. Shards and run folders are volumes; the recipes
# are baked in at /workspace/recipes (mount your own over it to change them without a rebuild).
# Bind mounts keep the host's ownership: add `--user "$(id -u):$(id -g)"` when the host folders
# are not writable by uid 1000.

# torch 2.7.1 + CUDA 12.8 (Hopper and Blackwell); mlcdist needs torch >= 2.6 for FSDP2's
# public fully_shard. Any pytorch/pytorch *-runtime tag with torch >= 2.6 works.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A non-root user owns the workspace and the mount points, so named volumes start writable.
RUN useradd --create-home --uid 1000 --shell /bin/bash mlcdist \
    && mkdir -p /workspace/shards /workspace/runs \
    && chown -R mlcdist:mlcdist /workspace

WORKDIR /opt/mlcdist
# Only what the package build needs (tests, docs and data stay out; see .dockerignore).
# pip keeps the image's torch (pyproject gives lower bounds only);
# scikit-learn is for the digits demo (`python -m tools.make_shards digits --vectors`).
COPY pyproject.toml README.md ./
COPY mlcdist ./mlcdist
COPY tools ./tools
RUN pip install --no-cache-dir . "scikit-learn>=1.3" \
    && python -c "import mlcdist, tools.make_shards, torch; print('torch', torch.__version__)"

WORKDIR /workspace
COPY --chown=mlcdist:mlcdist recipes ./recipes

# Numeric, so Kubernetes' runAsNonRoot can verify it; uid 1000 is the user `mlcdist` above.
USER 1000:1000
VOLUME ["/workspace/shards", "/workspace/runs"]

ENTRYPOINT ["accelerate", "launch"]
CMD ["-m", "mlcdist.train", "recipes/demo.yaml"]
