"""Shared fixtures. Layout: ``unit/`` mirrors ``mlcdist/`` (one module's behaviour, fast),
``e2e/`` runs commands and whole runs (trainer, distributed, eval, recipes, reproduce),
``support/`` holds helpers and the torchrun workers (imported as ``support.*``)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from support.paths import MULAN
from support.vector_run import write_toy_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """The toy vector data set of ``support.vector_run`` (module-scoped: written once)."""
    return write_toy_shards(tmp_path_factory.mktemp("shards") / "train")


@pytest.fixture(scope="module")
def one_thread():
    """The 2-core CI box is shared: one intra-op thread avoids 10x oversubscription slowdowns."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mulan() -> Path:
    """The official Mulan splits (``MLCDIST_MULAN``); the test is skipped without them."""
    if not (MULAN / "yeast" / "yeast-train.arff").is_file():
        pytest.skip(f"Mulan data not present in {MULAN} (set MLCDIST_MULAN)")
    return MULAN


def pytest_sessionfinish(session, exitstatus):
    """A child process left alive (e.g. a loader worker, which ignores SIGTERM) would make the exit
    handler of multiprocessing wait forever after the summary: kill it and fail the run instead."""
    left = multiprocessing.active_children()
    for child in left:
        child.kill()
    if left:
        print(f"\nerror: {len(left)} child process(es) outlived the tests and were killed: "
              + ", ".join(f"{c.name} (pid {c.pid})" for c in left))
        session.exitstatus = 1
