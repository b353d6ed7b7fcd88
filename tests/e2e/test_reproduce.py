"""Issue #6's reproduction tool and the train-set standardisation of vector data.

The end-to-end test runs ``tools.reproduce`` for real on Mulan yeast (1 seed, 1 pretraining
epoch, 2 finetune epochs, the four methods in this process); the Mulan files are read in place
from /work/shared and the tests that need them skip cleanly when they are absent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from mlcdist.data.info import load_dataset_info
from mlcdist.data.sources.arff import fit_standardizer, list_arff, read_arff
from mlcdist.data.sources.common import AnnotationError
from tools.make_shards import main as make_shards
from tools.reproduce import PAPER_MULSUPCON, load_vectors
from tools.reproduce import main as reproduce

from support.paths import MULAN, needs_mulan


TOY = """@relation toy
@attribute f1 numeric
@attribute f2 numeric
@attribute f3 numeric
@attribute a {0,1}
@attribute b {0,1}
@data
1,5,7,1,0
3,5,-1,0,1
5,5,3,1,1
"""
TOY_XML = """<labels xmlns="http://mulan.sourceforge.net/labels">
<label name="a"/><label name="b"/></labels>
"""


def toy(tmp_path: Path, text: str = TOY, name: str = "toy.arff") -> tuple[Path, Path]:
    (tmp_path / name).write_text(text)
    (tmp_path / "toy.xml").write_text(TOY_XML)
    return tmp_path / name, tmp_path / "toy.xml"


def test_standardizer_constant_feature_and_mismatch(tmp_path):
    arff, xml = toy(tmp_path)
    scaler = fit_standardizer(arff, xml)
    np.testing.assert_allclose(scaler.mean, [3, 5, 3])
    np.testing.assert_allclose(scaler.std, [np.sqrt(8 / 3), 1.0, np.sqrt(32 / 3)])  # ddof 0; 0 -> 1
    listing = list_arff(arff, xml, standardize_with=arff)
    x = np.stack([s.vector for s in listing.specs])
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(x[:, [0, 2]].std(0), 1, atol=1e-6)
    assert (x[:, 1] == 0).all()  # a constant feature maps to 0, not nan
    assert listing.source["standardize"]["mean"] == [3.0, 5.0, 3.0]
    other, _ = toy(tmp_path, TOY.replace("f3", "g3"), "other.arff")
    with pytest.raises(AnnotationError, match="other.arff: its feature attributes differ"):
        list_arff(arff, xml, standardize_with=other)
    with pytest.raises(FileNotFoundError, match="gone.arff: ARFF file not found"):
        list_arff(arff, xml, standardize_with=tmp_path / "gone.arff")


@needs_mulan
def test_standardize_yeast_test_uses_train_statistics(tmp_path):
    folder = MULAN / "yeast"
    train, test, xml = (folder / "yeast-train.arff", folder / "yeast-test.arff",
                        folder / "yeast.xml")
    for split, arff in (("train", train), ("test", test)):
        assert make_shards(["arff", "--arff", str(arff), "--xml", str(xml), "--standardize-with",
                            str(train), "--out", str(tmp_path / split), "--no-progress"]) == 0
    x_train, _, _, _ = load_vectors(tmp_path / "train")
    x_test, y_test, _, _ = load_vectors(tmp_path / "test")
    np.testing.assert_allclose(x_train.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(x_train.double().std(0, unbiased=False).numpy(), 1, atol=1e-5)
    raw_train, raw_test = read_arff(train)[1][:, :103], read_arff(test)[1][:, :103]
    mean, std = raw_train.astype(np.float64).mean(0), raw_train.astype(np.float64).std(0)
    np.testing.assert_allclose(x_test.numpy(), (raw_test - mean) / std, rtol=1e-5, atol=1e-5)
    assert abs(float(x_test.mean())) > 1e-4  # test is scaled with train, not its own, statistics
    recorded = load_dataset_info(tmp_path / "test").source["standardize"]
    assert recorded["fitted_on"] == str(train) and recorded["num_rows"] == 1500
    np.testing.assert_allclose(recorded["mean"], mean)
    np.testing.assert_allclose(recorded["std"], std)
    assert y_test.shape == (917, 14)


@needs_mulan
def test_reproduce_yeast_end_to_end(tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["yeast", "--seeds", "1", "--epochs", "1", "--finetune-epochs", "2", "--jobs", "1",
            "--out", str(out), "--no-progress"]
    start = time.perf_counter()
    assert reproduce(args) == 0
    first = time.perf_counter() - start
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]["yeast"]
    assert sorted(summary) == ["all", "any", "bce", "mulsupcon"]
    for method, entry in summary.items():
        for protocol in ("paper", "val_tuned", "clean"):
            for metric, stat in entry[protocol].items():
                assert 0 < stat["mean"] <= 1 and stat["sd"] == 0, (method, protocol, metric)
        # the paper protocol tunes thresholds on test: never below the validation-tuned one
        for metric in ("example_f1", "micro_f1", "macro_f1", "hamming_accuracy"):
            assert entry["paper"][metric]["mean"] >= entry["val_tuned"][metric]["mean"] - 1e-12
        assert entry["pretrain_loss"]["epochs"] == 1
        run = out / "yeast" / method / "seed-0"
        metrics = json.loads((run / "finetune" / "metrics.json").read_text())
        assert metrics["num_rows"] == {"train": 1350, "val": 150, "test": 917}
        assert metrics["epochs_run"] == 2 and (run / "pretrain" / "metrics.jsonl").is_file()
        assert not (run / "pretrain" / "checkpoints").exists()  # deleted once finetuned
    ln_n = summary["mulsupcon"]["pretrain_loss"]["ln_candidates"]
    assert ln_n == pytest.approx(np.log(32 + 256))
    assert results["paper_mulsupcon"]["yeast"] == PAPER_MULSUPCON["yeast"]
    table = (out / "results.md").read_text()
    assert "MulSupCon (paper)" in table and "| 0.659 | 0.667 | 0.475 | 0.799 |" in table
    assert "MulSupCon - paper" in table and "python -m tools.reproduce yeast" in table
    printed = capsys.readouterr().out
    assert "MulSupCon (paper)" in printed and "wall time" in printed
    start = time.perf_counter()  # a second call reuses every stored run
    assert reproduce(args) == 0
    assert time.perf_counter() - start < min(first, 10)
    assert json.loads((out / "results.json").read_text())["summary"] == results["summary"]


def test_reproduce_missing_arff_names_file_and_fix(tmp_path, capsys):
    (tmp_path / "yeast").mkdir()
    assert reproduce(["yeast", "--mulan", str(tmp_path), "--out", str(tmp_path / "o"),
                      "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "yeast-train.arff: not found" in err and "--mulan PATH" in err
