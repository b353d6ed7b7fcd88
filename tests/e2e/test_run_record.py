"""A training run's record: run_info.json, the summary line, loss_curve.png, and a restart of a
finished run reporting its real final loss (it once printed ``loss 0.0000``)."""

from __future__ import annotations

import json
import re

import yaml
from PIL import Image

from mlcdist import checkpoint
from mlcdist.train import main

from support.vector_run import recipe


def test_run_info_summary_curve_and_restart_of_a_finished_run(shards, tmp_path, capsys):
    run = tmp_path / "run"
    recipe_file = tmp_path / "toy.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe(shards, run, schedule={"epochs": 2})))
    args = [str(recipe_file), "optim.lr=0.002", "logging.every_steps=4"]
    assert main(args) == 0
    done = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"done: step 18/18, final loss (\d+\.\d{4}), wall \d:\d\d:\d\d, [\d.]+ samples/s, "
                         r"peak memory [\d.]+ GiB \((max RSS|CUDA max allocated)\), run folder .*", done)
    assert match, done
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]  # not the epochs' skip counts
    assert records[-1]["step"] == 18 and f"{records[-1]['loss']:.4f}" == match.group(1)
    assert {"momentum", "data_wait_share", "lr", "samples_per_s", "query_cosine"} <= records[-1].keys()
    assert 0 <= records[-1]["data_wait_share"] <= 1 and records[-1]["momentum"] == 0.9

    info = json.loads((run / "run_info.json").read_text())
    assert info["command"] == "python -m mlcdist.train " + " ".join(args)
    assert info["recipe"] == str(recipe_file) and info["overrides"] == args[1:]
    assert set(info["git"]) == {"commit", "dirty"}
    assert {"torch", "torchvision", "accelerate", "mlcdist", "deepspeed"} <= info["packages"].keys()
    assert info["packages"]["torch"]
    assert (info["world_size"], info["backend"], info["launcher"], info["hosts"]) == (1, "single", "plain", 1)
    assert info["start_time"] <= info["end_time"] and info["status"] == "complete"
    assert f"{info['summary']['final_loss']:.4f}" == match.group(1)
    with Image.open(run / "loss_curve.png") as image:
        assert image.format == "PNG"

    # a second start trains nothing and reports the final loss the checkpoint holds
    assert main(args) == 0
    again = capsys.readouterr().out.strip().splitlines()[-1]
    assert again.startswith(f"complete: {run} already finished at step 18/18, final loss {match.group(1)};"), again
    assert json.loads((run / "run_info.json").read_text()) == info  # a no-op start rewrites nothing
    state = checkpoint.load_file(run / "checkpoints" / "step-00000018" / checkpoint.STATE_FILE)
    assert f"{state['counters']['loss']:.4f}" == match.group(1)

    # a checkpoint written before the loss was kept in it: the loss metrics.jsonl logged at its step
    del state["counters"]["loss"]
    checkpoint.save_file(state, run / "checkpoints" / "step-00000018" / checkpoint.STATE_FILE)
    assert main(args) == 0
    assert f"final loss {match.group(1)};" in capsys.readouterr().out
