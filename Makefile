# Quick start targets (see README.md). PYTHON may point at a virtual environment's python.
PYTHON ?= python3
PIP_TORCH = torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test bench

setup:
	$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PYTHON) -m pip install -q $(PIP_TORCH)
	$(PYTHON) -m pip install -q -e '.[dev]'

demo: setup
	$(PYTHON) -m tools.make_shards digits --vectors --out shards/digits-vec
	$(PYTHON) -m mlcdist.train recipes/demo.yaml
	$(PYTHON) -m mlcdist.eval runs/demo --recipe recipes/eval/demo.yaml
	$(PYTHON) -m mlcdist.eval runs/demo --recipe recipes/eval/demo.yaml --random-init
	$(PYTHON) -m mlcdist.eval compare runs/demo/eval/linear runs/demo/eval/linear-random

test: setup
	$(PYTHON) -m pytest -q

bench: setup
	$(PYTHON) bench/loss.py
