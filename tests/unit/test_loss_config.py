"""LossConfig: the study's kinds, the candidates switch and their hyperparameters, strictly."""

from __future__ import annotations

import pytest

from mlcdist.config import ConfigError, load_recipe


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("loss:\n  kind: regg\n", r"loss.kind: 'regg' is not one of .*did you mean 'reg'\?"),
        ("loss:\n  kind: reg\n  alpah: 1\n", r"loss.alpah: unknown key; did you mean loss.alpha\?"),
        ("loss:\n  kind: asl\n  gamma_ng: 2\n", r"loss.gamma_ng: unknown key; did you mean loss.gamma_neg\?"),
        ("loss:\n  candidates: bach\n", r"loss.candidates: 'bach' is not one of .*did you mean 'batch'\?"),
        ("loss:\n  kind: all\n  candidates: batch\n", r"loss.candidates: batch is the study's in-batch"),
        ("loss:\n  kind: mulsupcon\n  alpha: 1\n", r"loss.alpha: is used by kind msc, reg, reg_plain only"),
        ("loss:\n  kind: asl\n  clip: 1.5\n", r"loss.clip: 1.5 must be in \[0, 1\)"),
        ("loss:\n  kind: msc\n  beta: -1\n", r"loss.beta: -1.0 must be >= 0"),
    ],
)
def test_bad_loss_settings_name_the_key(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message) as err:
        load_recipe(path)
    assert str(err.value).startswith(str(path))


def test_study_kinds_load_with_their_hyperparameters(tmp_path):
    cfg = load_recipe(write(tmp_path / "ok.yaml", "loss:\n  kind: reg\n  candidates: batch\n  alpha: -1\n"))
    assert (cfg.loss.kind, cfg.loss.candidates, cfg.loss.alpha) == ("reg", "batch", -1.0)
    assert cfg.loss.prototypes and not cfg.loss.supervised
    asl = load_recipe(write(tmp_path / "asl.yaml", "loss:\n  kind: asl\n  gamma_neg: 4\n")).loss
    assert asl.supervised and not asl.prototypes and asl.gamma_neg == 4.0
