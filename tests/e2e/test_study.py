"""``python -m tools.study``: any Mulan-style set (a synthetic one of delicious' shape: 983 labels,
~19 per sample, sparse ARFF with quoted names), losses x fractions x seeds, the outputs, reuse,
merging of a second call, and its one-line errors."""

from __future__ import annotations

import json
import time

import pytest

from mlcdist.config import load_recipe, to_dict
from tools.study import recipes
from tools.study.command import main as study
from tools.study.jobs import subset

from support.mulan_synth import LABELS, write_set
from support.paths import MULAN, needs_mulan

QUICK = ["--epochs", "1", "--finetune-epochs", "2", "--jobs", "1", "--no-progress"]


def test_study_on_a_983_label_set(tmp_path, capsys):
    paths = write_set(tmp_path / "arff")
    out = tmp_path / "study"
    args = ["--data", f"deli={paths['train']},{paths['test']},{paths['xml']}", "--losses", "mulsupcon,reg,bce",
            "--fractions", "0.5,1.0", "--seeds", "2", "--out", str(out), *QUICK]
    start = time.perf_counter()
    assert study(args) == 0
    first = time.perf_counter() - start
    results = json.loads((out / "results.json").read_text())
    assert results["num_labels"] == {"deli": LABELS} and results["methods"] == ["mulsupcon", "reg", "bce"]
    runs = results["runs"]
    assert len(runs) == 12
    assert {(r["method"], r["fraction"], r["seed"]) for r in runs} == {
        (m, f, s) for m in ("mulsupcon", "reg", "bce") for f in (0.5, 1.0) for s in (0, 1)}
    for run in runs:
        for protocol in ("val_tuned", "paper"):
            metrics = run["test"][protocol]
            assert {"mAP", "hamming_accuracy", "example_f1", "macro_f1", "micro_f1", "precision_at_1"} <= set(metrics)
    rows = {r["fraction"]: r["train_rows"] for r in runs}
    assert rows == {1.0: 144, 0.5: 72}  # 160 train rows minus the 16 carved for validation
    table = (out / "results.md").read_text()
    assert "## deli: 983 labels" in table and "| reg (study) | 0.5 | 2 |" in table
    assert "Gain over BCE" in table
    for name in ("gain_vs_labels.png", "gain_vs_fraction.png", "metrics_deli.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert "deli (983 labels)" in capsys.readouterr().out

    start = time.perf_counter()  # the same grid again: every run reused
    assert study(args) == 0
    assert time.perf_counter() - start < first / 2
    # another loss into the same folder: the tables keep the first call's rows
    assert study([*args[:2], "--losses", "jaccard", "--fractions", "1.0", "--seeds", "1", "--out", str(out), *QUICK]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert len(merged["runs"]) == 13 and "jaccard" in merged["methods"] and "bce" in merged["methods"]


def test_arff_dir_and_errors(tmp_path, capsys):
    write_set(tmp_path / "arff", name="tiny", train=40, test=20, features=6)
    assert study(["--arff-dir", str(tmp_path / "arff"), "--losses", "mulsupcon,bcee", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'bcee' is not a loss.kind" in err and "zlpr" in err
    (tmp_path / "arff" / "tiny-test.arff").unlink()
    assert study(["--arff-dir", str(tmp_path / "arff"), "--out", str(tmp_path)]) == 2
    assert "tiny-test.arff: not found" in capsys.readouterr().err
    assert study(["--data", "x=a.arff,b.arff", "--out", str(tmp_path)]) == 2
    assert "expected NAME=TRAIN.arff,TEST.arff,LABELS.xml" in capsys.readouterr().err
    assert study(["--fractions", "0,1", "--out", str(tmp_path)]) == 2
    assert "must be in (0, 1]" in capsys.readouterr().err


def _resolved(path, overrides):
    cfg = to_dict(load_recipe(path, list(overrides)))
    cfg.pop("name")
    cfg["logging"].pop("run_dir")
    return cfg


@pytest.mark.parametrize("method", ["bce", "all", "any", "jaccard"])
def test_derived_recipes_equal_the_hand_written_ones(method):
    """yeast's derived recipe for a method is its ``recipes/yeast_METHOD.yaml`` (name aside)."""
    derived = recipes.derive("yeast", method, 1500)
    assert _resolved(derived.pretrain, derived.pretrain_overrides) == _resolved(
        recipes.RECIPES / f"yeast_{method}.yaml", [])
    assert derived.finetune == str(recipes.RECIPES / "finetune" / "yeast.yaml") and not derived.finetune_overrides


def test_new_sets_get_the_paper_batch():
    small, large = recipes.derive("newset", "jaccard", 1999), recipes.derive("newset", "jaccard", 2000)
    assert "data.batch_size=32" in small.pretrain_overrides and "queue.size=256" in small.pretrain_overrides
    assert "data.batch_size=256" in large.pretrain_overrides
    assert load_recipe(small.finetune, list(small.finetune_overrides)).eval.batch_size == 32
    batch = recipes.derive("newset", "reg", 500, candidates="batch")
    assert load_recipe(batch.pretrain, list(batch.pretrain_overrides)).loss.candidates == "batch"


def test_fraction_subset_is_seeded_and_nested_in_train():
    import torch

    mask = torch.ones(100, dtype=torch.bool)
    mask[::10] = False  # validation rows
    a, b = subset(mask, 0.3, seed=1), subset(mask, 0.3, seed=1)
    assert torch.equal(a, b) and len(a) == 27 and mask[a].all()
    assert not torch.equal(a, subset(mask, 0.3, seed=2))
    assert torch.equal(subset(mask, 1.0, seed=5), mask.nonzero().squeeze(1))


@needs_mulan
def test_study_runs_a_shared_mulan_set_by_name(tmp_path):
    assert study(["emotions", "--losses", "mulsupcon,bce", "--fractions", "1.0", "--seeds", "1",
                  "--mulan", str(MULAN), "--out", str(tmp_path), *QUICK]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_labels"] == {"emotions": 6} and len(results["runs"]) == 2


def test_finetune_change_reuses_pretraining(tmp_path):
    """Only the finetune cap changes: the stored backbone is finetuned again, pretraining is not
    re-run (its metrics.jsonl stays the same file), and the numbers come from the new finetune."""
    paths = write_set(tmp_path / "arff", name="tiny", train=60, test=20, features=6)
    out = tmp_path / "s"
    base = ["--arff-dir", str(tmp_path / "arff"), "--losses", "mulsupcon", "--fractions", "1.0", "--seeds", "1",
            "--epochs", "1", "--jobs", "1", "--no-progress", "--out", str(out)]
    assert study([*base, "--finetune-epochs", "1"]) == 0
    run = out / "tiny" / "mulsupcon" / "seed-0"
    log = (run / "pretrain" / "metrics.jsonl").stat()
    assert (run / "pretrain" / "backbone.pt").is_file() and not (run / "pretrain" / "checkpoints").exists()
    first = json.loads((run / "result.json").read_text())
    assert study([*base, "--finetune-epochs", "3"]) == 0
    second = json.loads((run / "result.json").read_text())
    assert (run / "pretrain" / "metrics.jsonl").stat().st_mtime_ns == log.st_mtime_ns
    assert first["epochs_run"] == 1 and second["epochs_run"] >= 2 and second["pretrain"] == first["pretrain"]
    assert paths["train"].is_file()


def test_the_batch_rule_counts_the_rows_a_run_trains_on(tmp_path):
    """bibtex's 4,880 training rows take batch 256; 10% of them is a small set: batch 32."""
    import argparse

    import torch

    from tools.study.command import make_jobs
    from tools.study.data import VectorSet
    from tools.study.jobs import pretrain_config

    x, y = torch.zeros(4880, 3), torch.zeros(4880, 2)
    data = {"big": VectorSet("big", ("a", "b"), x, y, x[:10], y[:10], "fp")}
    args = argparse.Namespace(epochs=None, finetune_epochs=None, val_fraction=0.1, candidates=None,
                              batch_size=None)
    jobs = make_jobs(data, ["mulsupcon"], [0.1, 1.0], 1, tmp_path, args, ())
    batch = {job.fraction: pretrain_config(job, tmp_path).data.batch_size for job in jobs}
    assert batch == {0.1: 32, 1.0: 256}


def test_tables_merge_runs_of_the_same_settings_only(tmp_path):
    write_set(tmp_path / "arff", name="tiny", train=60, test=20, features=6)
    out = tmp_path / "s"
    base = ["--arff-dir", str(tmp_path / "arff"), "--fractions", "1.0", "--seeds", "1", "--finetune-epochs", "1",
            "--jobs", "1", "--no-progress", "--out", str(out)]
    assert study([*base, "--losses", "mulsupcon", "--epochs", "1"]) == 0
    assert study([*base, "--losses", "bce", "--epochs", "1"]) == 0
    assert json.loads((out / "results.json").read_text())["methods"] == ["mulsupcon", "bce"]
    assert study([*base, "--losses", "jaccard", "--epochs", "2"]) == 0  # a quick look with other settings
    assert json.loads((out / "results.json").read_text())["methods"] == ["jaccard"]
