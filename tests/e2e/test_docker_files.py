"""The Docker image's files keep their promises without Docker: the pins match the base image's
torch, the build installs under them as a non-root image, the entry point runs the demo (or
hands its arguments to accelerate launch), and the Kubernetes example runs as the image's user."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from support.paths import REPO

DOCKER = REPO / "docker"
_spec = importlib.util.spec_from_file_location("check_pins", DOCKER / "check_pins.py")  # not a package
check_pins = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_pins)
BASE, pins = check_pins.BASE, check_pins.pins

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and ``\\`` continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current = f"{current} {line.strip()}" if current else line.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


STEPS = dockerfile_instructions((REPO / "Dockerfile").read_text())


def args_of(kind: str) -> list[str]:
    return [arg for k, arg in STEPS if k == kind]


def test_dockerfile_runs_the_entrypoint_as_a_non_root_user():
    kinds = [k for k, _ in STEPS]
    users = args_of("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_run = max(i for i, k in enumerate(kinds) if k == "RUN")
    assert kinds.index("USER") > last_run, "RUN after USER runs as the user"
    entry = json.loads(args_of("ENTRYPOINT")[0])
    assert entry == ["/usr/local/bin/mlcdist-entrypoint"]
    assert "docker/entrypoint.sh /usr/local/bin/mlcdist-entrypoint" in args_of("COPY")
    assert json.loads(args_of("CMD")[0]) == ["demo"]
    volumes = json.loads(args_of("VOLUME")[0])
    assert {"/workspace/shards", "/workspace/runs"} <= set(volumes)
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {"shards", "runs", ".git"} <= ignored
    assert not {"docker", "docker/", "docker/*", "*.sh", "*.txt"} & ignored, "the build needs docker/"


def test_constraints_pin_the_base_images_torch_and_every_dependency():
    base = next(arg for arg in args_of("ARG") if arg.startswith("BASE_IMAGE="))
    tag = re.fullmatch(r"BASE_IMAGE=pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", base)
    assert tag, base
    pinned = pins((DOCKER / "constraints.txt").read_text())
    assert pinned["torch"] == tag[1]
    assert set(BASE) <= pinned.keys()
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = [re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() for d in project["dependencies"]]
    assert set(needed) <= pinned.keys(), set(needed) - pinned.keys()
    install = next(arg for arg in args_of("RUN") if "pip install" in arg)
    assert "-c docker/constraints.txt" in install
    assert install.count("python docker/check_pins.py") == 2  # before and after pip install
    assert install.index("check_pins") < install.index("pip install") < install.rindex("check_pins")


def test_check_pins_names_what_differs():
    done = subprocess.run([sys.executable, str(DOCKER / "check_pins.py")], capture_output=True, text=True,
                          timeout=60)
    have = {name: version(name).split("+")[0] for name in BASE}
    pinned = pins((DOCKER / "constraints.txt").read_text())
    if all(have[n] == pinned[n] for n in BASE):
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 1 and done.stderr.startswith("error: ")
        assert all(f"{n} {have[n]}" in done.stderr and f"{pinned[n]} in" in done.stderr
                   for n in BASE if have[n] != pinned[n])


def fake_commands(bin_dir: Path) -> None:
    """Stand-ins that print their own command line: the entry point's flow, without torch."""
    bin_dir.mkdir()
    for name in ("mlcdist-shards", "mlcdist-train", "mlcdist-eval", "accelerate"):
        (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*"\n')
        (bin_dir / name).chmod(0o755)


def entrypoint(tmp_path: Path, *args: str) -> list[str]:
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(DOCKER / "entrypoint.sh"), *args], cwd=tmp_path / "work", env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def makefile_demo() -> list[str]:
    """The Makefile's demo steps, spelled as the installed commands."""
    text = (REPO / "Makefile").read_text()
    body = re.search(r"^demo: .*?\n((?:\t.*\n)+)", text, re.M)[1]
    spell = {"tools.make_shards": "mlcdist-shards", "mlcdist.train": "mlcdist-train",
             "mlcdist.eval": "mlcdist-eval"}
    return [re.sub(r"\$\(PYTHON\) -m (\S+)", lambda m: spell[m[1]], line.strip())
            for line in body.splitlines()]


@needs_bash
def test_entrypoint_parses_and_runs_the_makefile_demo_or_accelerate_launch(tmp_path):
    assert subprocess.run(["bash", "-n", str(DOCKER / "entrypoint.sh")]).returncode == 0
    fake_commands(tmp_path / "bin")
    (tmp_path / "work").mkdir()
    demo = makefile_demo()
    ran = entrypoint(tmp_path)
    assert len(ran) == len(demo) and all(r.startswith(d) for r, d in zip(ran, demo)), (ran, demo)
    assert entrypoint(tmp_path, "demo") == ran
    for split in ("train", "test"):  # shards already there (a volume from an earlier run): not made again
        (tmp_path / "work" / "shards" / "digits-vec" / split).mkdir(parents=True)
        (tmp_path / "work" / "shards" / "digits-vec" / split / "dataset.json").write_text("{}")
    assert entrypoint(tmp_path) == ran[1:]
    launch = ["--config_file", "recipes/accelerate/ddp.yaml", "-m", "mlcdist.train", "recipes/coco.yaml",
              "data.batch_size=4"]
    assert entrypoint(tmp_path, *launch) == ["accelerate launch " + " ".join(launch)]
    for recipe in re.findall(r"recipes/\S+\.yaml", (DOCKER / "entrypoint.sh").read_text()):
        assert (REPO / recipe).exists(), recipe


def pytorchjob() -> dict:
    return yaml.safe_load((REPO / "docs" / "k8s" / "pytorchjob.yaml").read_text())


@pytest.mark.parametrize("replica", ["Master", "Worker"])
def test_pytorchjob_runs_as_the_images_user_with_shared_memory_gpus_and_volumes(replica):
    job = pytorchjob()
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    pod = job["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]
    user = args_of("USER")[-1].split(":")[0]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and str(security["runAsUser"]) == user
    (container,) = pod["containers"]
    assert container["name"] == "pytorch" and container["ports"][0]["name"] == "pytorchjob-port"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == int(job["spec"]["nprocPerNode"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
    image_volumes = set(json.loads(args_of("VOLUME")[0]))
    assert {"/workspace/shards", "/workspace/runs"} <= set(mounts) <= image_volumes | {"/dev/shm"}
    assert pod["terminationGracePeriodSeconds"] > 30


@needs_bash
def test_pytorchjob_command_parses_and_uses_the_operators_variables():
    container = pytorchjob()["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["bash", "-c"]
    (script,) = container["args"]
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
    assert script.startswith("exec accelerate launch ")
    for name in ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        assert name in script, name
    words = shlex.split(script)
    for path in (words[words.index("--config_file") + 1], words[words.index("-m") + 2]):
        assert (REPO / path).exists(), path
