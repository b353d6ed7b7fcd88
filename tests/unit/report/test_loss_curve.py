"""loss_curve.png from metrics.jsonl: repeated steps, torn lines, panels, the plot command."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mlcdist.errors import MlcdistError
from mlcdist.eval.__main__ import main as eval_main
from mlcdist.report.loss_curve import plot_loss_curve, read_metrics


def write_metrics(run, records, tail=""):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_read_metrics_keeps_the_newest_record_of_a_step_and_skips_a_torn_line(tmp_path):
    write_metrics(tmp_path, [{"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.0}, {"step": 2, "loss": 2.5},
                             {"note": "no step"}, {"event": "epoch", "step": 4, "skipped": 0}],
                  tail='{"step": 6, "lo')
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 2, "loss": 2.5}, {"step": 4, "loss": 2.0}]


def test_plot_draws_a_png_and_the_eval_plot_command_redraws_it(tmp_path, capsys):
    records = [{"step": s, "epoch": s // 10, "loss": 5.0 / s, "lr": 0.1 * s / 40, "momentum": 0.99,
                "samples_per_s": 100.0, "data_wait_share": 0.1, "ln_candidates": 4.0,
                **({"collapse_warning": True} if s == 30 else {})} for s in range(1, 41)]
    write_metrics(tmp_path / "run", records)
    out = plot_loss_curve(tmp_path / "run")
    assert out == tmp_path / "run" / "loss_curve.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and min(image.size) >= 600
    out.unlink()
    assert eval_main(["plot", str(tmp_path / "run")]) == 0
    assert out.is_file() and "loss_curve.png" in capsys.readouterr().out


def test_plot_of_a_folder_without_metrics_is_one_error_line(tmp_path, capsys):
    with pytest.raises(MlcdistError, match="no metrics.jsonl"):
        plot_loss_curve(tmp_path)
    assert eval_main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
