"""A study or reproduce killed by SIGTERM (a scheduler's stop, ``kill``, ``timeout``) takes its
run processes with it: they used to finish their runs and write them into the output folder
after the tool had gone, where a later call reused them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# the pool as ``board.run_all`` builds it, with a run that takes a minute
TOOL = """
import multiprocessing as mp, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from tools.study import board

def run(pidfile):
    open(pidfile, "w").write(str(os.getpid()))
    time.sleep(60)

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=board._init_worker,
                               initargs=(ctx.Queue(), {}, os.getpid()))
    pool.submit(run, sys.argv[1]).result()
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; nobody may reap it in a container


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_run_process_exits_when_the_tool_is_terminated(tmp_path):
    script, pidfile = tmp_path / "tool.py", tmp_path / "run.pid"
    script.write_text(TOOL)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tool = subprocess.Popen([sys.executable, str(script), str(pidfile)], cwd=REPO, env=env)
    try:
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60), "the run never started"
        run_pid = int(pidfile.read_text())
        assert alive(run_pid)
        tool.send_signal(signal.SIGTERM)
        tool.wait(10)
        assert wait_for(lambda: not alive(run_pid), 5), "the run outlived the tool"
    finally:
        tool.kill()

