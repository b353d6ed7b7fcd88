"""The model card (``README.md`` beside the exported weights): how to load them, the data set,
the recipe, where the weights come from (commit, step, command) and the probe metrics of every
evaluation found in the run folder (``RUN/eval/*/metrics.json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

METRIC_COLUMNS = ("mAP", "micro_f1", "macro_f1", "example_f1", "hamming_accuracy", "precision_at_1")
IMPORTS = {"torchvision": "import torch, torchvision", "timm": "import timm, torch",
           "safetensors": "import safetensors.torch, torch, torchvision"}


def _imports(fmt: str, load: str) -> str:
    return IMPORTS[fmt] if "torchvision." in load else IMPORTS[fmt].replace(", torchvision", "")


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def dataset_lines(recipe: dict, num_classes: int, class_names: Optional[list]) -> list[str]:
    """The training set as the recipe and its ``dataset.json`` (when still readable) name it."""
    train = recipe.get("data", {}).get("train") or "?"
    info = _read_json(Path(train) / "dataset.json") or {}
    names = class_names or info.get("class_names") or []
    lines = [f"- training set: `{train}`" + (f" ({info['name']}, {info.get('num_samples', '?')} samples, "
                                              f"{info.get('modality', '?')})" if info.get("name") else "")]
    lines.append(f"- classes: {num_classes}" + (f": {', '.join(map(str, names[:20]))}"
                                                 f"{' ...' if len(names) > 20 else ''}" if names else ""))
    return lines


def recipe_rows(recipe: dict, world: Optional[int]) -> list[tuple[str, str]]:
    get = lambda section, key, default="?": recipe.get(section, {}).get(key, default)  # noqa: E731
    batch = (f"{get('data', 'batch_size')} per process x {world or '?'} process(es) x "
             f"{get('optim', 'grad_accum', 1)} accumulation")
    return [
        ("architecture", f"mlp {get('model', 'mlp_dims')} on vectors" if get("model", "arch") == "mlp"
         else f"{get('model', 'arch')} (image size {get('augment', 'image_size')})"),
        ("loss", f"{get('loss', 'kind')}, temperature {get('loss', 'temperature')}"),
        ("queue / key momentum", f"{get('queue', 'size')} / {get('model', 'momentum')}"),
        ("optimizer", f"{get('optim', 'name')}, lr {get('optim', 'lr')}, weight decay "
                      f"{get('optim', 'weight_decay')}"),
        ("batch", batch),
        ("schedule", f"{get('schedule', 'kind')}, {get('schedule', 'epochs')} epochs, max steps "
                     f"{get('schedule', 'max_steps')}"),
        ("precision", str(get("precision", "mixed"))),
    ]


def provenance_lines(run_dir: Path, source: Path, counters: dict, world: Optional[int]) -> list[str]:
    """``run_dir``: the pretraining run (its ``run_info.json`` names commit, command, versions)."""
    info = _read_json(run_dir / "run_info.json") or {}
    git = info.get("git") or {}
    commit = git.get("commit")
    dirty = " (with uncommitted changes)" if git.get("dirty") else ""
    where = (f"step {counters['step']}, epoch {counters.get('epoch', '?')}, world size {world or '?'}"
             if "step" in counters else f"finetuned by `python -m mlcdist.eval --mode finetune` (selected "
             f"epoch {counters.get('selected_epoch', '?')}) from the pretraining run `{run_dir}`")
    lines = [f"- weights: `{source}`, {where}",
             f"- mlcdist commit: {f'`{commit}`{dirty}' if commit else 'unknown (not a git checkout or no run_info.json)'}"]
    if info.get("command"):
        lines.append(f"- command: `{info['command']}`")
    versions = {k: v for k, v in (info.get("packages") or {}).items() if v}
    if versions:
        lines.append("- packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return lines


def _fmt(value: Any) -> str:
    return "n/a" if not isinstance(value, (int, float)) or math.isnan(value) else f"{value:.4f}"


def evaluation_lines(run_dir: Path, source: Path) -> list[str]:
    """A table of the test metrics (clean protocol) of each evaluation of the run."""
    found = sorted(run_dir.glob("eval/*/metrics.json"))
    if (source.parent / "metrics.json").is_file():  # eval's finetuned.pt sits beside its metrics
        found.append(source.parent / "metrics.json")
    reports = [(p.parent.name, r) for p in found if (r := _read_json(p)) and "test" in r]
    if not reports:
        return ["No evaluation found in the run folder; `python -m mlcdist.eval RUN` adds one "
                "(export again afterwards to list it here)."]
    lines = ["Test metrics, clean protocol (threshold 0.5; mAP is threshold-free):", "",
             "| evaluation | mode | test set | " + " | ".join(METRIC_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(METRIC_COLUMNS)]
    for name, report in reports:
        clean = report["test"].get("clean", {})
        test_set = report.get("datasets", {}).get("test", {}).get("name", "?")
        mode = report.get("mode", "?") + (" (random encoder)" if report.get("random_init") else "")
        lines.append(f"| {name} | {mode} | {test_set} | " +
                     " | ".join(_fmt(clean.get(m)) for m in METRIC_COLUMNS) + " |")
    return lines


def model_card(*, title: str, fmt: str, load: str, weights_file: str, recipe: dict, num_classes: int,
               class_names: Optional[list], counters: dict, world: Optional[int], run_dir: Path,
               provenance_dir: Path, source: Path, exported_classes: Optional[int]) -> str:
    """The card's markdown; ``run_dir`` holds the weights' evaluations, ``provenance_dir`` is the
    pretraining run (the same folder, except for eval's finetuned.pt)."""
    world = world or (_read_json(provenance_dir / "run_info.json") or {}).get("world_size")
    head = ("backbone and its trained classifier" if exported_classes else
            "backbone only (no projection head, no key encoder, no classifier)")
    lines = [f"# {title}", "",
             f"The query encoder's {head} of an mlcdist run, as `{weights_file}` ({fmt} format).", "",
             "## Load", "", "```python", _imports(fmt, load),
             load, "```", "",
             "## Data", "", *dataset_lines(recipe, num_classes, class_names), "",
             "## Recipe", "", "| setting | value |", "|---|---|",
             *[f"| {k} | {v} |" for k, v in recipe_rows(recipe, world)], "",
             "The full resolved recipe is `recipe.yaml` beside this card.", "",
             "## Provenance", "", *provenance_lines(provenance_dir, source, counters, world), "",
             "## Evaluation", "", *evaluation_lines(run_dir, source), ""]
    return "\n".join(lines)
