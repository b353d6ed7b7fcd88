"""One export: read the checkpoint (``mlcdist/checkpoint.py`` only), write weights, card, recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from mlcdist import checkpoint
from mlcdist.export.card import model_card
from mlcdist.export.formats import WRITERS, ModelSpec, save_weights, split_model_state


def run_folder(state_file: Path) -> Path:
    """``RUN`` for ``RUN/checkpoints/step-N/state.pt``; else the folder holding the file."""
    if state_file.parent.parent.name == "checkpoints":
        return state_file.parent.parent.parent
    return state_file.parent


def model_spec(recipe: dict, feature_dim: Optional[int]) -> ModelSpec:
    model = recipe.get("model", {})
    return ModelSpec(arch=str(model.get("arch")), image_size=int(recipe.get("augment", {}).get("image_size", 224)),
                     feature_dim=feature_dim, mlp_dims=tuple(model.get("mlp_dims") or ()),
                     dropout=float(model.get("dropout") or 0.0))


def export(location: Path, fmt: str, out: Optional[Path] = None) -> Path:
    """Write ``fmt`` weights of the checkpoint at ``location`` plus README.md and recipe.yaml into
    ``out`` (default ``RUN/export/FORMAT``); returns ``out``."""
    source = checkpoint.resolve(location)
    state = checkpoint.read(source)
    recipe = yaml.safe_load(state["config"]) or {}
    spec = model_spec(recipe, state["feature_dim"])
    backbone, classifier = split_model_state(state["model"], state.get("kind"))
    weights = WRITERS[fmt](backbone, classifier, spec)
    run_dir = run_folder(source)
    out = out or run_dir / "export" / fmt
    out.mkdir(parents=True, exist_ok=True)
    counters = dict(state.get("counters") or {"selected_epoch": state.get("selected_epoch")})
    save_weights(weights, out, {"format": "pt", "arch": spec.arch, "source": str(source),
                                "step": str(counters.get("step", ""))})
    (out / "recipe.yaml").write_text(state["config"])
    pretrain = state.get("pretrain_checkpoint")  # eval's finetuned.pt names the checkpoint it started from
    provenance = run_folder(Path(pretrain)) if pretrain else run_dir
    what = "finetuned" if state.get("kind") == "finetuned" else f"pretrained with {recipe.get('loss', {}).get('kind')}"
    card = model_card(
        title=f"{provenance.resolve().name}: {spec.arch} {what} (mlcdist)", fmt=fmt, load=weights.load,
        weights_file=weights.file, recipe=recipe, num_classes=int(state["num_classes"]),
        class_names=state.get("class_names"), counters=counters, world=state.get("world_size"),
        run_dir=run_dir, provenance_dir=provenance, source=source, exported_classes=weights.num_classes)
    (out / "README.md").write_text(card)
    return out
