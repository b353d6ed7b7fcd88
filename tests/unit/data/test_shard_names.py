"""Shard names from ``dataset.json`` never reach a shell: ``pipe:`` injection attempts are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.shardgen import write_split

from mlcdist.config import AugmentConfig, DataConfig
from mlcdist.data.info import join_url, load_dataset_info
from mlcdist.data.loaders import make_loader
from mlcdist.data.verify import verify

DATA = DataConfig(batch_size=2, num_workers=0, shuffle_buffer=1, seed=0)
AUG = AugmentConfig(image_size=16)


def eval_indices(location: str) -> list[int]:
    loader = make_loader(location, DATA, AUG, mode="eval", rank=0, world_size=1)
    return sorted(i for b in loader for i in b["index"][b["valid"]].tolist())


def rename_first_shard(root: Path, name: str) -> None:
    index = json.loads((root / "dataset.json").read_text())
    index["shards"][0]["file"] = name
    (root / "dataset.json").write_text(json.dumps(index))


def test_pipe_location_reads_shards(tmp_path):
    """The documented object-store route: ``pipe:CMD`` prints ``CMD/FILE`` (here ``cat``)."""
    write_split(tmp_path, [3, 3], modality="vector")
    assert eval_indices(f"pipe:cat {tmp_path}") == eval_indices(str(tmp_path)) == list(range(6))


@pytest.mark.parametrize("location", ["pipe:cat {root}", "pipe:URL=s3:// cat {root}"])
def test_pipe_injection_in_shard_name_is_refused(tmp_path, location):
    root, marker = tmp_path / "d", tmp_path / "PWNED"
    write_split(root, [3, 3], modality="vector")
    rename_first_shard(root, f"shard-000000.tar; touch {marker} #")
    with pytest.raises(ValueError, match=r"dataset.json: shards\[0\]\.file .*touch.* not a plain shard"):
        eval_indices(location.format(root=root))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["pipe:touch {marker}; cat shard-000001.tar", "../shard-000001.tar",
                                  "/etc/passwd", "sub/shard-000000.tar", "-rf.tar", "shard 1.tar",
                                  "shard-$(touch {marker}).tar", "shard-000000.tar\n"])
def test_local_index_with_unsafe_name_is_refused(tmp_path, monkeypatch, name):
    """A local ``dataset.json`` read from the current folder (root ``""``) used to hand a
    ``pipe:``-prefixed name straight to webdataset, which ran it."""
    marker = tmp_path / "PWNED"
    write_split(tmp_path, [3, 3], modality="vector")
    rename_first_shard(tmp_path, name.format(marker=marker))
    monkeypatch.chdir(tmp_path)
    for location in ("dataset.json", str(tmp_path)):
        with pytest.raises(ValueError, match=r"shards\[0\]\.file"):
            eval_indices(location)
        with pytest.raises(ValueError, match=r"shards\[0\]\.file"):
            verify(location)
    assert not marker.exists()


def test_index_entry_types_are_checked(tmp_path):
    write_split(tmp_path, [3, 3], modality="vector")
    index = json.loads((tmp_path / "dataset.json").read_text())
    index["shards"][1]["num_samples"] = "3; rm -rf /"
    (tmp_path / "dataset.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"shards\[1\]\.num_samples"):
        load_dataset_info(tmp_path)


def test_join_url_quotes_names_under_pipe():
    assert join_url("pipe:s5cmd cat s3://b/x", "shard-000000.tar") == "pipe:s5cmd cat s3://b/x/shard-000000.tar"
    assert join_url("pipe:cat /x", "a b;c.tar") == "pipe:cat /x/'a b;c.tar'"
    assert join_url("/local/x", "a b.tar") == "/local/x/a b.tar"
