"""``python -m mlcdist.export``: a tiny ResNet-18 run exported, loaded by the model card's own
load line into a fresh torchvision (and timm, when installed) model, gives exactly mlcdist's
backbone features; eval's finetuned model exports with its classifier as ``fc``."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from mlcdist.config import from_dict
from mlcdist.eval.__main__ import main as evaluate
from mlcdist.eval.features import load_backbone_state, load_checkpoint
from mlcdist.export.__main__ import main as export
from mlcdist.models import build_backbone
from mlcdist.train import Trainer

from support.vector_run import recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
FAST = ["data.num_workers=0", "--no-plots", "eval.epochs=2", "eval.batch_size=32"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    from tools.make_shards import main as make_shards

    root = tmp_path_factory.mktemp("export")
    shards = root / "digits"
    assert make_shards(["digits", "--out", str(shards), "--train", "96", "--test", "48", "--size", "16",
                        "--no-progress", "--workers", "1"]) == 0
    cfg = from_dict({
        "data": {"train": str(shards / "train"), "test": str(shards / "test"), "batch_size": 16,
                 "num_workers": 0, "shuffle_buffer": 32},
        "augment": {"image_size": 16}, "model": {"arch": "resnet18", "head_dims": [32, 16]},
        "queue": {"size": 32}, "schedule": {"epochs": 1, "max_steps": 2},
        "checkpoint": {"every_epochs": 0}, "logging": {"run_dir": str(root / "run"), "progress": False},
    })
    Trainer(cfg).fit()
    assert evaluate([str(root / "run"), *FAST]) == 0  # a linear probe for the model card
    return root / "run"


def load_as_documented(out: Path, monkeypatch) -> torch.nn.Module:
    """Run the python block of the model card, in the export folder (its paths are relative)."""
    card = (out / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    monkeypatch.chdir(out)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the card's own lines are what users will paste
    return namespace["model"].eval()


def mlcdist_backbone(location: Path) -> torch.nn.Module:
    ckpt = load_checkpoint(location)
    model_cfg = from_dict(ckpt.recipe).model
    backbone, _ = build_backbone(dataclasses.replace(model_cfg, weights=None), image_size=16)
    load_backbone_state(backbone, ckpt, model_cfg.arch)
    return backbone.eval()


@pytest.mark.parametrize("fmt", ["torchvision", "safetensors", "timm"])
def test_exported_backbone_gives_mlcdist_features(image_run, fmt, monkeypatch, capsys):
    if fmt == "timm":
        pytest.importorskip("timm")
    assert export([str(image_run), "--format", fmt]) == 0
    out = image_run / "export" / fmt
    assert f"wrote {out / 'README.md'}" in capsys.readouterr().out
    model = load_as_documented(out, monkeypatch)
    if fmt != "timm":
        assert isinstance(model, __import__("torchvision").models.ResNet)
        model.fc = torch.nn.Identity()  # the card: fc stays fresh; Identity gives the 512-d features
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), mlcdist_backbone(image_run)(x))

    card = (out / "README.md").read_text()
    for text in ("backbone only (no projection head, no key encoder", "digits-train", "| architecture | resnet18",
                 "step 2, epoch", "mlcdist commit:", "| linear | linear | digits-test |"):
        assert text in card, text
    assert "\ndata:\n" in (out / "recipe.yaml").read_text()


def test_finetuned_model_is_saved_and_exports_with_its_classifier(image_run, monkeypatch):
    assert evaluate([str(image_run), "--mode", "finetune", *FAST]) == 0
    finetuned = image_run / "eval" / "finetune" / "finetuned.pt"
    assert export([str(finetuned), "--out", str(image_run / "export-ft")]) == 0
    model = load_as_documented(image_run / "export-ft", monkeypatch)  # strict: fc is the trained head
    assert model.fc.out_features == 10
    state = torch.load(finetuned, weights_only=True)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = torch.nn.functional.linear(mlcdist_backbone(finetuned)(x), state["model"]["classifier.weight"],
                                            state["model"]["classifier.bias"])
        assert torch.equal(model(x), logits)
    card = (image_run / "export-ft" / "README.md").read_text()
    assert "backbone and its trained classifier" in card and "| finetune | finetune | digits-test |" in card


def test_export_refusals_are_one_error_line(shards, tmp_path, capsys):
    Trainer(from_dict(recipe(shards, tmp_path / "mlp", schedule={"epochs": 1}))).fit()
    capsys.readouterr()
    assert export([str(tmp_path / "mlp")]) == 2
    assert capsys.readouterr().err.startswith("error: --format torchvision: model.arch=mlp has no torchvision")
    assert export([str(tmp_path / "nothing-here")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    assert export([str(tmp_path / "mlp"), "--format", "safetensors"]) == 0  # vectors: safetensors works
