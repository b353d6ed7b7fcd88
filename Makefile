# Quick start targets (see README.md). PYTHON may point at a virtual environment's python.
PYTHON ?= python3
PIP_TORCH = torch==2.14.1 torchvision==0.29.1
# Installed already (mlcdist and every requirement pyproject.toml lists, dev extra included, as
# distributions, not merely importable from this folder)? Then setup does not call pip, which needs
# the package index and fails offline. Without tomllib (Python 3.10) it just installs.
export INSTALLED = import importlib.metadata as m, re, tomllib; \
    project = tomllib.load(open("pyproject.toml", "rb"))["project"]; m.version("mlcdist"); \
    [m.version(re.split(r"[<>=!~;\[ ]", r)[0]) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]

.PHONY: setup demo demo-image test bench

setup:
	$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PYTHON) -m pip install -q $(PIP_TORCH)
	$(PYTHON) -c "$$INSTALLED" 2>/dev/null || $(PYTHON) -m pip install -q -e '.[dev]'

demo: setup
	$(PYTHON) -m tools.make_shards digits --vectors --out shards/digits-vec
	$(PYTHON) -m mlcdist.train recipes/demo.yaml
	$(PYTHON) -m mlcdist.eval runs/demo --recipe recipes/eval/demo.yaml
	$(PYTHON) -m mlcdist.eval runs/demo --recipe recipes/eval/demo.yaml --random-init
	$(PYTHON) -m mlcdist.eval compare runs/demo/eval/linear runs/demo/eval/linear-random

# The image path end to end: 32 px mosaics as JPEG shards, ResNet-18 pretraining (momentum
# encoder, queue, two views), linear probes of it and of a random encoder. About 6 minutes on
# 2 CPU cores; one thread per process keeps the two loader workers off the training thread.
demo-image: export OMP_NUM_THREADS = 1
demo-image: setup
	$(PYTHON) -m tools.make_shards digits --size 32 --train 5000 --out shards/digits-32
	$(PYTHON) -m mlcdist.train recipes/demo_image.yaml
	$(PYTHON) -m mlcdist.eval runs/demo-image --recipe recipes/eval/demo_image.yaml
	$(PYTHON) -m mlcdist.eval runs/demo-image --recipe recipes/eval/demo_image.yaml --random-init
	$(PYTHON) -m tools.demo_summary runs/demo-image

test: setup
	$(PYTHON) -m pytest -q

bench: setup
	$(PYTHON) bench/loss.py
