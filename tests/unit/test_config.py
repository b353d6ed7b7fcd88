"""Strict recipes: typed tree, clear errors, base inheritance, dotted overrides, round trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support.paths import REPO
from mlcdist.config import (
    ConfigError,
    RecipeConfig,
    dump_yaml,
    from_dict,
    load_recipe,
    save_recipe,
)



def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_follow_the_paper():
    cfg = RecipeConfig()
    assert cfg.loss.temperature == 0.1
    assert cfg.model.momentum == 0.999
    assert (cfg.optim.name, cfg.optim.lr, cfg.schedule.kind) == ("sgd", 0.1, "cosine")


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path / "x.yaml", "loss:\n  temprature: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: loss.temprature: unknown key; did you mean loss.temperature?"


def test_unknown_component_is_an_error(tmp_path):
    path = write(tmp_path / "x.yaml", "optimiser:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"optimiser: unknown key; did you mean optim\?"):
        load_recipe(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim:\n  lr: fast\n", r"optim.lr: expected float, got 'fast'"),
        ("data:\n  batch_size: 12.5\n", r"data.batch_size: expected int"),
        ("data:\n  batch_size: true\n", r"data.batch_size: expected int"),
        ("optim:\n  name: adan\n", r"optim.name: 'adan' is not one of .*did you mean 'adam'\?"),
        ("optim:\n  lr: -1\n", r"optim.lr: -1.0 must be > 0"),
        ("augment:\n  crop_scale: [0.2]\n", r"augment.crop_scale: expected tuple\[float, float\].*exactly 2"),
        ("model:\n  head_dims: [128, x]\n", r"model.head_dims\[1\]: expected int"),
        ("loss: 3\n", r"loss: expected a mapping of LossConfig fields"),
        ("model:\n  momentum: 1.5\n", r"model.momentum: 1.5 must be in \[0, 1\)"),
    ],
)
def test_wrong_types_and_values(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message) as err:
        load_recipe(path)
    assert str(err.value).startswith(str(path))


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path / "base" / "image.yaml", "optim:\n  lr: 0.1\n  momentum: 0.8\ndata:\n  batch_size: 64\n")
    path = write(tmp_path / "child.yaml", "base: base/image.yaml\noptim:\n  lr: 0.05\n")
    cfg = load_recipe(path, ["data.batch_size=128", "loss.kind=any", "schedule.max_steps=3"])
    assert cfg.optim.lr == 0.05 and cfg.optim.momentum == 0.8  # child wins, base fills in
    assert cfg.data.batch_size == 128 and cfg.loss.kind == "any" and cfg.schedule.max_steps == 3


def test_override_typo_is_reported(tmp_path):
    path = write(tmp_path / "x.yaml", "name: x\n")
    with pytest.raises(ConfigError, match=r"optim.learning_rate: unknown key; valid keys"):
        load_recipe(path, ["optim.learning_rate=0.1"])


def test_missing_base_and_cycles(tmp_path):
    path = write(tmp_path / "a.yaml", "base: nope.yaml\n")
    with pytest.raises(ConfigError, match="base: nope.yaml not found"):
        load_recipe(path)
    write(tmp_path / "b.yaml", "base: c.yaml\n")
    write(tmp_path / "c.yaml", "base: b.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_recipe(tmp_path / "b.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_recipe(write(tmp_path / "x.yaml", "augment:\n  crop_scale: [0.3, 0.9]\n"), ["model.weights=null"])
    out = tmp_path / "resolved.yaml"
    save_recipe(cfg, out)
    again = load_recipe(out)
    assert again == cfg
    assert dump_yaml(again) == out.read_text()


def test_from_dict_accepts_ints_for_floats():
    cfg = from_dict({"optim": {"lr": 1}})
    assert isinstance(cfg.optim.lr, float)


def test_every_shipped_recipe_loads():
    recipes = sorted((REPO / "recipes").rglob("*.yaml"))
    recipes = [p for p in recipes if "accelerate" not in p.parts]
    assert recipes, "no recipes shipped"
    for path in recipes:
        load_recipe(path)


def test_bare_no_override_means_no(tmp_path):
    path = write(tmp_path / "x.yaml", "name: x\n")
    assert load_recipe(path, ["precision.mixed=no"]).precision.mixed == "no"


def test_exponent_floats_without_a_dot(tmp_path):
    # YAML 1.1 reads 2e-4 as a string; users write it that way in recipes and overrides.
    path = write(tmp_path / "x.yaml", "optim:\n  lr: 3e-4\n")
    assert load_recipe(path).optim.lr == 3e-4
    assert load_recipe(path, ["optim.lr=2E-5"]).optim.lr == 2e-5
    with pytest.raises(ConfigError, match=r"optim.lr: expected float, got 'e-4'"):
        load_recipe(path, ["optim.lr=e-4"])


def _float_fields(cls: type, prefix: str = "") -> list[tuple[str, int | None, int]]:
    """(dotted key, tuple position or None, tuple length) of every float-valued field of the tree."""
    import dataclasses
    import typing

    out = []
    for name, tp in typing.get_type_hints(cls).items():
        dotted = f"{prefix}{name}"
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if dataclasses.is_dataclass(tp):
            out += _float_fields(tp, dotted + ".")
        elif tp is float or (typing.get_origin(tp) is not tuple and args == [float]):
            out.append((dotted, None, 0))
        elif typing.get_origin(tp) is tuple and float in args:
            out += [(dotted, i, len(typing.get_args(tp))) for i, a in enumerate(typing.get_args(tp)) if a is float]
    return out


FLOAT_FIELDS = _float_fields(RecipeConfig)


def test_float_fields_found():
    keys = {k for k, _, _ in FLOAT_FIELDS}
    assert {"optim.lr", "loss.temperature", "optim.grad_clip", "augment.crop_scale"} <= keys


@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf", "1e999"])
def test_non_finite_numbers_are_rejected_everywhere(tmp_path, bad):
    path = write(tmp_path / "x.yaml", "name: x\n")
    defaults = RecipeConfig()
    for dotted, pos, length in FLOAT_FIELDS:
        if pos is None:
            value = bad
        else:
            component, field = dotted.split(".")
            items = [str(v) for v in getattr(getattr(defaults, component), field)]
            items[pos] = bad
            value = "[" + ", ".join(items) + "]"
        key = dotted if pos is None else f"{dotted}[{pos}]"
        with pytest.raises(ConfigError, match=re.escape(key) + r": .* is not a finite number"):
            load_recipe(path, [f"{dotted}={value}"])
        component, field = dotted.split(".")
        file = write(tmp_path / "bad.yaml", f"{component}:\n  {field}: {value}\n")
        with pytest.raises(ConfigError, match=r"is not a finite number") as err:
            load_recipe(file)
        assert str(err.value).startswith(f"{file}: {key}: ")


def test_duplicate_keys_are_an_error(tmp_path):
    path = write(tmp_path / "dup.yaml", "optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: line 4: duplicate key 'lr' (first given on line 2); keep one"
    top = write(tmp_path / "top.yaml", "optim:\n  lr: 0.1\nname: a\noptim:\n  momentum: 0.8\n")
    with pytest.raises(ConfigError, match=r"top.yaml: line 4: duplicate key 'optim'"):
        load_recipe(top)
    with pytest.raises(ConfigError, match=r"override .*duplicate key 'lr'"):
        load_recipe(write(tmp_path / "ok.yaml", "name: x\n"), ["optim={lr: 0.1, lr: 2}"])
    # a YAML merge key may be overridden on purpose: not a duplicate
    merged = write(tmp_path / "merge.yaml", "optim:\n  <<: {lr: 0.2, momentum: 0.8}\n  lr: 0.3\n")
    assert (load_recipe(merged).optim.lr, load_recipe(merged).optim.momentum) == (0.3, 0.8)


def test_print_config_with_overrides_after_it(capsys):
    """Issue 16 item 8: ``--print-config`` followed by overrides was an argparse error."""
    from mlcdist.train import main

    assert main([str(REPO / "recipes" / "demo.yaml"), "--print-config", "optim.lr=0.25", "data.batch_size=7"]) == 0
    printed = capsys.readouterr().out
    assert "lr: 0.25" in printed and "batch_size: 7" in printed
