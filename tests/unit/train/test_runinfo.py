"""run_info.json pieces: launcher and host count from the environment, git state that never
fails, package versions from metadata, sessions kept across restarts."""

from __future__ import annotations

import json
import subprocess

import pytest

from mlcdist.train import runinfo


@pytest.mark.parametrize("env, expected", [
    ({}, "plain"),
    ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0"}, "slurm"),
    ({"TORCHELASTIC_RUN_ID": "x", "SLURM_JOB_ID": "7"}, "torchrun"),  # srun torchrun: the inner one
    ({"ACCELERATE_MIXED_PRECISION": "no", "TORCHELASTIC_RUN_ID": "x"}, "accelerate"),
])
def test_launcher_is_read_from_the_environment(env, expected):
    assert runinfo.launcher(env) == expected


@pytest.mark.parametrize("world, env, hosts", [
    (1, {}, 1), (8, {"LOCAL_WORLD_SIZE": "4"}, 2), (16, {"SLURM_JOB_NUM_NODES": "4"}, 4),
    (6, {"LOCAL_WORLD_SIZE": "4"}, 2),
])
def test_host_count(world, env, hosts):
    assert runinfo.host_count(world, env) == hosts


def test_git_state_outside_a_checkout_is_none(tmp_path):
    assert runinfo.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_git_state_of_a_checkout_names_commit_and_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = runinfo.git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    assert runinfo.git_state(tmp_path)["dirty"] is True


def test_package_versions_from_metadata():
    versions = runinfo.package_versions(("torch", "mlcdist", "no-such-package-xyz"))
    assert versions["torch"] and versions["mlcdist"] and versions["no-such-package-xyz"] is None


def test_restart_keeps_earlier_sessions(tmp_path):
    runinfo.begin(tmp_path, {"command": "first", "start_time": "t0", "end_time": "t1", "start_step": 0})
    record = runinfo.begin(tmp_path, {"command": "second", "start_time": "t2", "end_time": None,
                                      "start_step": 13})
    saved = json.loads((tmp_path / runinfo.RUN_INFO).read_text())
    assert saved == record and saved["command"] == "second"
    assert saved["previous"] == [{"command": "first", "start_time": "t0", "end_time": "t1",
                                  "start_step": 0, "summary": None}]


def test_logged_loss_takes_the_newest_record_of_the_step(tmp_path):
    lines = [{"step": 5, "loss": 2.0}, {"step": 9, "loss": 1.5}, {"step": 9, "loss": 1.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 9,')
    assert runinfo.logged_loss(tmp_path, 9) == 1.25
    assert runinfo.logged_loss(tmp_path, 7) is None
    assert runinfo.logged_loss(tmp_path / "missing", 9) is None


def test_summary_line_names_loss_wall_throughput_and_memory():
    line = runinfo.summary_line({"step": 25, "total_steps": 25, "final_loss": 1.23456, "wall_s": 75.2,
                                 "samples_per_s": 512.34, "peak_mem_gib": 1.5, "peak_mem_kind": "max RSS"})
    assert line == ("step 25/25, final loss 1.2346, wall 0:01:15, 512.3 samples/s, "
                    "peak memory 1.50 GiB (max RSS)")
