"""The atomic writer: fsyncs the file and its folder, and a failure keeps the old file and no partial."""

from __future__ import annotations

import os

import pytest
import torch

from mlcdist import checkpoint
from mlcdist.data.shards import write_dataset
from mlcdist.data.records import EncodedSample
from mlcdist.fileio import atomic_write, partial_path, write_text


@pytest.fixture
def fsyncs(monkeypatch):
    """Every ``os.fsync`` as ``"file"`` or ``"dir"`` (by the descriptor's type), in call order."""
    calls: list[str] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_write_fsyncs_the_file_then_its_folder(tmp_path, fsyncs):
    target = tmp_path / "a.txt"
    write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert fsyncs == ["file", "dir"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_partial_file_is_hidden_in_the_same_folder(tmp_path):
    assert partial_path(tmp_path / "state.pt") == tmp_path / ".state.pt.partial"
    with atomic_write(tmp_path / "state.pt") as f:
        f.write(b"x")
        assert (tmp_path / ".state.pt.partial").exists() and not (tmp_path / "state.pt").exists()


def test_failure_mid_write_keeps_the_previous_file_and_no_partial(tmp_path, fsyncs):
    target = tmp_path / "a.txt"
    write_text(target, "old\n")
    fsyncs.clear()
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_write(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("disk went away")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert fsyncs == []  # nothing was published


def test_failing_fsync_keeps_the_previous_file_and_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    checkpoint.save_file({"v": torch.tensor([1.0])}, target)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(checkpoint.CheckpointError, match="state.pt: could not write the checkpoint: the disk is full"):
        checkpoint.save_file({"v": torch.tensor([2.0])}, target)
    assert checkpoint.load_file(target)["v"].item() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_checkpoint_publish_fsyncs_pointer_and_folders(tmp_path, fsyncs):
    root = tmp_path / "checkpoints"
    checkpoint.staging_dir(root, 5)
    checkpoint.save_file({"v": torch.zeros(1)}, checkpoint.staging_path(root, 5) / checkpoint.STATE_FILE)
    assert fsyncs == ["file", "dir"]
    checkpoint.publish(root, 5, keep_last=2)
    assert fsyncs[2:] == ["dir", "file", "dir"]  # folder rename, then the latest pointer
    assert (root / checkpoint.LATEST).read_text() == "step-00000005\n"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000005"]


def test_shard_writer_commits_every_file_through_the_atomic_writer(tmp_path, fsyncs):
    samples = [EncodedSample("npy", b"\x93NUMPY", [0], f"s{i}") for i in range(3)]
    write_dataset(samples, tmp_path, name="t", class_names=["a"], modality="vector",
                  feature_dim=1, max_samples_per_shard=2)
    assert fsyncs == ["file", "dir"] * 3  # two shards, then dataset.json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json", "shard-000000.tar",
                                                          "shard-000001.tar"]
