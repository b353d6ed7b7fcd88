"""``python -m mlcdist.eval`` end to end on the digits demo data.

The demo mosaics (``mlcdist.data.sources.digits``) are used as 256-d pixel vectors for the
pretrained-vs-random comparison: an MLP learns them with MulSupCon in a few seconds on a CPU,
while a ResNet needs minutes. The image path (ResNet-18, 16 px mosaics) is checked end to end
with a two-step checkpoint, for linear and finetune modes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from support.paths import REPO
from mlcdist.config import from_dict, load_recipe
from mlcdist.data.encode import npy_bytes
from mlcdist.data.records import EncodedSample
from mlcdist.data.shards import write_dataset
from mlcdist.data.sources.digits import digit_mosaics
from mlcdist.eval import carve_validation, class_similarity, resolve_checkpoint
from mlcdist.eval.__main__ import main
from mlcdist.eval.features import load_features
from mlcdist.eval.figures import class_cosine
from mlcdist.metrics import METRICS, PAPER_PROTOCOL
from mlcdist.train import Trainer

FAST = ["data.num_workers=0", "--no-plots"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_vectors(out: Path, x: np.ndarray, y: np.ndarray, name: str, prefix: str = "c") -> Path:
    samples = [EncodedSample("npy", npy_bytes(x[i]), np.flatnonzero(y[i]).tolist(), f"{name}-{i}")
               for i in range(len(x))]
    write_dataset(samples, out, name=name, class_names=[f"{prefix}{j}" for j in range(y.shape[1])],
                  modality="vector", feature_dim=x.shape[1], max_samples_per_shard=256)
    return out


@pytest.fixture(scope="module")
def vector_digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits-vec")
    for split, count in (("train", 600), ("test", 200)):
        images, y = digit_mosaics(split, count, size=16, seed=0)
        write_vectors(root / split, images[..., 0].reshape(count, -1) / 255.0, y, f"digits-{split}")
    return root


def pretrain(cfg: dict) -> Path:
    trainer = Trainer(from_dict(cfg))
    trainer.fit()
    return Path(cfg["logging"]["run_dir"])


@pytest.fixture(scope="module")
def vector_run(vector_digits, tmp_path_factory) -> Path:
    return pretrain({
        "data": {"train": str(vector_digits / "train"), "test": str(vector_digits / "test"),
                 "batch_size": 64, "num_workers": 0, "shuffle_buffer": 200},
        "augment": {"mask_ratio": 0.2},
        "model": {"arch": "mlp", "mlp_dims": [128, 128], "dropout": 0.0, "head_dims": [64, 32],
                  "momentum": 0.9},
        "queue": {"size": 256},
        "optim": {"name": "adam", "lr": 0.001, "weight_decay": 0.0},
        "schedule": {"epochs": 100, "max_steps": 200, "kind": "constant"},
        "checkpoint": {"every_epochs": 0, "keep_last": 1},
        "logging": {"run_dir": str(tmp_path_factory.mktemp("vector-run")), "progress": False,
                    "every_steps": 100},
    })


def evaluate(*args: str) -> int:
    return main([*map(str, args)])


@pytest.fixture(scope="module")
def probes(vector_run) -> dict[str, Path]:
    assert evaluate(vector_run, *FAST[:1]) == 0  # with plots
    assert evaluate(vector_run, "--random-init", *FAST) == 0
    return {"pretrained": vector_run / "eval" / "linear", "random": vector_run / "eval" / "linear-random"}


def strict_json(path: Path) -> dict:
    def no_nan(token: str):
        raise AssertionError(f"{path}: non-JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_probe_on_pretrained_checkpoint_beats_random_encoder(probes):
    pre = strict_json(probes["pretrained"] / "metrics.json")
    rand = strict_json(probes["random"] / "metrics.json")
    assert rand["random_init"] and not pre["random_init"]
    assert pre["test"]["clean"]["mAP"] > rand["test"]["clean"]["mAP"] + 0.05, (pre["test"], rand["test"])
    assert pre["val"]["mAP"] > rand["val"]["mAP"]


def test_metrics_json_is_complete_and_loads(probes, vector_run):
    out = probes["pretrained"]
    report = strict_json(out / "metrics.json")
    assert report["mode"] == "linear" and report["transfer"] is False
    assert Path(report["checkpoint"]) == resolve_checkpoint(vector_run)
    assert 1 <= report["selected_epoch"] <= report["epochs_run"] == len(report["history"])
    for section in (report["val"], *report["test"].values()):
        assert set(METRICS) <= set(section) and all(0 <= section[m] <= 1 for m in METRICS)
    assert report["test"]["paper"]["protocol"] == PAPER_PROTOCOL
    assert "validation" in report["test"]["val_tuned"]["protocol"]
    assert report["test"]["clean"]["threshold"] == 0.5
    # the paper protocol tunes on test, so it can only match or beat the clean thresholds
    for m in ("example_f1", "macro_f1", "micro_f1"):
        assert report["test"]["paper"][m] >= report["test"]["clean"][m] - 1e-12
    ap = report["per_class_ap"]
    assert list(ap) == [f"c{j}" for j in range(10)]
    assert np.isclose(np.mean(list(ap.values())), report["test"]["clean"]["mAP"])
    assert report["num_rows"] == {"train": 540, "val": 60, "test": 200}  # 10% carved, seeded
    assert "| clean (threshold 0.5) |" in (out / "metrics.md").read_text()
    assert sum(report["test_positives"].values()) == int(digit_mosaics("test", 200, size=16, seed=0)[1].sum())
    for png in ("per_class_ap.png", "class_similarity.png", "curves.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and min(image.size) >= 300
    assert load_recipe(out / "config.yaml").eval.mode == "linear"


def test_cached_features_are_reused_and_in_dataset_order(vector_run, tmp_path, capsys):
    assert evaluate(vector_run, "--out", tmp_path, "eval.epochs=1", *FAST) == 0
    assert "from cache" not in capsys.readouterr().err
    cache = sorted((tmp_path / "features").glob("*.pt"))
    assert [p.name.split("-")[0] for p in cache] == ["test", "train"]
    test = load_features(cache[0])  # weights_only=True inside
    assert torch.equal(test.index, torch.arange(200)) and test.features.shape == (200, 128)
    _, y = digit_mosaics("test", 200, size=16, seed=0)
    assert torch.equal(test.labels.bool(), torch.from_numpy(y))
    stamp = cache[0].stat().st_mtime_ns
    assert evaluate(vector_run, "--out", tmp_path, "eval.epochs=1", *FAST) == 0
    assert "from cache" in capsys.readouterr().err and cache[0].stat().st_mtime_ns == stamp


@pytest.mark.slow  # multi-process (the marker's convention); about 10 s
def test_features_on_two_processes_equal_one(probes, vector_run, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        env.pop(key, None)
    # 200 test rows over 2 ranks x 48 -> 3 batches per rank, 88 padded rows to drop
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29700 + os.getpid() % 1000), "--module", "mlcdist.eval",
           str(vector_run), "--features-only", "--out", str(tmp_path), "eval.batch_size=48",
           "data.num_workers=0"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = {p.name: load_features(p) for p in (probes["pretrained"] / "features").glob("*.pt")}
    double = {p.name: load_features(p) for p in (tmp_path / "features").glob("*.pt")}
    assert single.keys() == double.keys() and len(single) == 2
    for name in single:
        assert torch.equal(double[name].index, single[name].index)
        assert torch.equal(double[name].labels, single[name].labels)
        torch.testing.assert_close(double[name].features, single[name].features)


def test_vector_finetune_and_transfer(vector_run, tmp_path):
    out = tmp_path / "ft"
    assert evaluate(vector_run, "--recipe", REPO / "recipes/eval/vector_finetune.yaml", "--out", out,
                    "eval.epochs=3", "eval.lr=0.003", *FAST) == 0
    report = strict_json(out / "metrics.json")
    assert report["mode"] == "finetune" and report["epochs_run"] == 3
    assert report["history"][0]["lr"] == [4e-5, 0.003]  # backbone group, then the new head
    # transfer to another 5-class dataset (same vector length): allowed only with --transfer
    rng = np.random.default_rng(1)
    other = tmp_path / "other"
    for split, n in (("train", 120), ("test", 60)):
        write_vectors(other / split, rng.random((n, 256)), rng.random((n, 5)) < 0.4, f"other-{split}")
    target = ["--train", other / "train", "--test", other / "test"]
    assert evaluate(vector_run, *target, "--transfer", "--out", tmp_path / "tr", "eval.epochs=3", *FAST) == 0
    report = strict_json(tmp_path / "tr" / "metrics.json")
    assert report["transfer"] is True and len(report["per_class_ap"]) == 5
    assert report["datasets"]["train"]["name"] == "other-train"


def test_mismatches_name_both_sides(vector_run, tmp_path, capsys):
    rng = np.random.default_rng(2)
    five = write_vectors(tmp_path / "five", rng.random((40, 256)), rng.random((40, 5)) < 0.4, "five")
    narrow = write_vectors(tmp_path / "narrow", rng.random((40, 32)), rng.random((40, 10)) < 0.4, "narrow")

    def error(*args) -> str:
        assert evaluate(vector_run, *args, *FAST) == 2
        return capsys.readouterr().err

    message = error("--train", five, "--test", five)
    assert "pretrained on 10 classes" in message and "has 5" in message and "--transfer" in message
    renamed = write_vectors(tmp_path / "renamed", rng.random((40, 256)), rng.random((40, 10)) < 0.4, "renamed",
                            prefix="k")
    message = error("--train", renamed, "--test", renamed)
    assert "class names differ" in message and "digits-train" in message and "renamed" in message
    assert "only in renamed: k0" in message and "--transfer" in message and message.count("\n") == 1
    message = error("--train", narrow, "--test", narrow, "--transfer")
    assert "256-d" in message and "32-d" in message
    message = error("model.arch=resnet18")
    assert "'mlp'" in message and "'resnet18'" in message and "architecture mismatch" in message
    message = error("model.mlp_dims=[64]")
    assert "[128, 128]" in message and "[64]" in message
    message = error("--test", tmp_path / "missing")
    assert str(tmp_path / "missing" / "dataset.json") in message and "tools.make_shards" in message
    message = error("eval.select_metric=mAp")
    assert "eval.select_metric" in message and "mAP" in message
    assert main(["compare", str(tmp_path)]) == 2 and "metrics.json" in capsys.readouterr().err


def test_compare_prints_runs_side_by_side(probes, capsys, tmp_path):
    figure = tmp_path / "compare.png"
    assert main(["compare", str(probes["pretrained"]), str(probes["random"]), "--plot", str(figure)]) == 0
    text, err = capsys.readouterr()
    pre = strict_json(probes["pretrained"] / "metrics.json")["test"]
    assert "linear-random" in text and "mAP (paper*)" in text and "micro-F1 (clean @0.5)" in text
    assert f"{pre['clean']['mAP']:.4f}" in text and f"{pre['paper']['micro_f1']:.4f}" in text
    assert "test data" in text and "digits-test (200)" in text and "warning" not in err
    with Image.open(figure) as image:
        assert image.format == "PNG" and min(image.size) >= 300


def test_train_as_test_warns_and_compare_flags_other_test_sets(probes, vector_run, vector_digits, tmp_path,
                                                               capsys):
    out = tmp_path / "fit"
    assert evaluate(vector_run, "--test", vector_digits / "train", "--out", out, "eval.epochs=1", *FAST) == 0
    assert "data.test is data.train" in capsys.readouterr().err
    assert "data.test is data.train" in strict_json(out / "metrics.json")["warnings"][0]
    assert main(["compare", str(probes["pretrained"]), str(out)]) == 0
    text, err = capsys.readouterr()
    assert "digits-train (600)" in text and "digits-test (200)" in text
    assert "tested on different data sets" in err and "fit: data.test is data.train" in err


def test_image_checkpoint_linear_and_finetune(tmp_path, capsys):
    from tools.make_shards import main as make_shards

    shards = tmp_path / "digits"
    assert make_shards(["digits", "--out", str(shards), "--train", "96", "--test", "48", "--size", "16",
                        "--no-progress", "--workers", "1"]) == 0
    run = pretrain({
        "data": {"train": str(shards / "train"), "test": str(shards / "test"), "batch_size": 16,
                 "num_workers": 0, "shuffle_buffer": 32},
        "augment": {"image_size": 16}, "model": {"arch": "resnet18", "head_dims": [32, 16]},
        "queue": {"size": 32}, "schedule": {"epochs": 1, "max_steps": 2},
        "checkpoint": {"every_epochs": 0}, "precision": {"mixed": "no"},
        "logging": {"run_dir": str(tmp_path / "run"), "progress": False},
    })
    step_dir = run / "checkpoints" / "step-00000002"
    capsys.readouterr()
    assert evaluate(step_dir, "eval.epochs=2", "eval.batch_size=32", *FAST) == 0
    assert evaluate(step_dir / "state.pt", "--mode", "finetune", "eval.epochs=2", "eval.batch_size=32",
                    *FAST) == 0
    # no terminal under pytest: plain progress lines (96 train rows / 32 = 3 batches, 48 test = 2)
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("features")] == [
        line for line in lines if re.fullmatch(r"features (train|test): \d/\d batches .* ETA \d:\d\d:\d\d", line)]
    assert any(line.startswith("features train: 3/3 batches (100%)") for line in lines), lines
    assert any(line.startswith("features test: 2/2 batches (100%)") for line in lines), lines
    assert any(line.startswith("finetune epoch 2/2: 3/3 batches (100%)") for line in lines), lines
    for mode in ("linear", "finetune"):
        report = strict_json(run / "eval" / mode / "metrics.json")
        assert report["mode"] == mode and report["num_rows"]["test"] == 48
        assert len(report["per_class_ap"]) == 10 and report["datasets"]["test"]["name"] == "digits-test"


def test_carved_validation_is_seeded_and_disjoint():
    a, b = carve_validation(100, 0.1, seed=3), carve_validation(100, 0.1, seed=3)
    assert torch.equal(a, b) and int(a.sum()) == 10
    assert not torch.equal(a, carve_validation(100, 0.1, seed=4))
    assert int(carve_validation(5, 0.01, 0).sum()) == 1 and int(carve_validation(2, 0.9, 0).sum()) == 1


def test_class_similarity_rows_are_softmaxes_over_class_embeddings():
    # classes 0 and 1 point the same way, class 2 orthogonally; class 3 has no sample at all
    h = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0]])
    prob, exclusive, count = class_similarity(h, y)
    assert exclusive.tolist() == [True, True, True, False] and count.tolist() == [1, 1, 1, 0]
    torch.testing.assert_close(prob[:3, :3].sum(1), torch.ones(3, dtype=torch.float64))
    assert prob[0, 1] > prob[0, 2] and torch.isnan(prob[3]).all() and torch.isnan(prob[:, 3]).all()
    cos, _, _ = class_cosine(h, y)  # what class_similarity.png shows, on the fixed scale 0..1
    assert cos[0, 1] == pytest.approx(2 / 4.01 ** 0.5) and cos[0, 2] == 0
    torch.testing.assert_close(prob[0, :3], torch.softmax(cos[0, :3], 0))
    cos01 = torch.nn.functional.cosine_similarity(h[0], h[1], dim=0).double()
    expected = torch.softmax(torch.stack([torch.tensor(1.0, dtype=torch.float64), cos01,
                                          torch.tensor(0.0, dtype=torch.float64)]), 0)
    torch.testing.assert_close(prob[0, :3], expected)


def test_every_eval_recipe_loads():
    recipes = sorted((REPO / "recipes" / "eval").glob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        load_recipe(path)


def test_the_by_hand_path_validates_on_rows_pretraining_held_out(probes, vector_run, vector_digits, tmp_path,
                                                                 capsys):
    """mlcdist.train then mlcdist.eval: pretraining left out the very rows eval carves as validation
    (data.hold_out_val, on by default), so the carve is clean; a carve pretraining saw is noted with
    the number of rows it saw, and recorded."""
    carve = carve_validation(600, 0.1, 0)
    record = strict_json(vector_run / "run_info.json")["held_out"]
    assert record == {"samples": 60, "of": 600, "val_fraction": 0.1, "seed": 0}
    recipe = yaml.safe_load((vector_run / "config.yaml").read_text())
    read = torch.cat([b["index"] for b in Trainer(from_dict(recipe)).loader])  # the run's pretraining batches
    assert len(read) == 8 * 64 and not carve[read].any()
    pre = strict_json(probes["pretrained"] / "metrics.json")["datasets"]["val"]
    assert (pre["seen_in_pretraining"], pre["seen_in_pretraining_rows"]) == (False, 0)
    rand = strict_json(probes["random"] / "metrics.json")["datasets"]["val"]
    assert rand["seen_in_pretraining"] is False  # a random encoder saw nothing
    capsys.readouterr()

    other = carve_validation(600, 0.1, 1)  # another seed carves rows pretraining trained on
    assert evaluate(vector_run, "--out", tmp_path / "seed1", "eval.seed=1", "eval.epochs=1", *FAST) == 0
    seen = int((other & ~carve).sum())
    assert 0 < seen < 60
    assert f"and {seen} of its 60 rows were in pretraining" in capsys.readouterr().err
    val = strict_json(tmp_path / "seed1" / "metrics.json")["datasets"]["val"]
    assert (val["seen_in_pretraining"], val["seen_in_pretraining_rows"]) == (True, seen)

    everything = pretrain({**recipe, "data": {**recipe["data"], "hold_out_val": False},
                           "schedule": {**recipe["schedule"], "max_steps": 2},
                           "logging": {**recipe["logging"], "run_dir": str(tmp_path / "all-rows")}})
    assert strict_json(everything / "run_info.json")["held_out"] is None
    capsys.readouterr()
    assert evaluate(everything, "--out", tmp_path / "carved", "eval.epochs=1", *FAST) == 0
    assert "and 60 of its 60 rows were in pretraining" in capsys.readouterr().err
    assert evaluate(everything, "--val", vector_digits / "test", "--out", tmp_path / "named", "eval.epochs=1",
                    *FAST) == 0
    assert "note: the validation split is carved" not in capsys.readouterr().err
