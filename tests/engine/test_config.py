"""Config: every recipe in configs/ resolves to the values pinned in resolved_configs.json (same
keys, values and value types), every file in configs/_base_ serves a recipe, unknown keys are named
with the closest valid one, and a recipe's dataset brings its own augmentation defaults."""
import json
from pathlib import Path

import pytest
import yaml

from visattn.engine.config import ConfigError, dump_config, load_config

HERE = Path(__file__).parent
CONFIGS = HERE.parents[1] / "configs"
RESOLVED = json.loads((HERE / "resolved_configs.json").read_text())
RECIPES = sorted(CONFIGS.glob("*.yaml"))  # the recipes; configs/_base_/ holds the files they build on
BASES = sorted((CONFIGS / "_base_").rglob("*.yaml"))


def _same(a, b, path="cfg"):
    """Equal values of the same types (1 and 1.0, or a tuple and a list, differ)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_every_recipe_is_pinned():
    assert sorted(RESOLVED) == sorted(["(defaults)", *(p.name for p in RECIPES)])
    for a, b in (({"x": 1}, {"x": 1.0}), ({"x": [1]}, {"x": (1,)}), ({"x": 1, "y": 2}, {"y": 2, "x": 1})):
        with pytest.raises(AssertionError):
            _same(a, b)


def test_every_base_serves_a_recipe():
    named, todo = set(), list(RECIPES)
    while todo:
        path = todo.pop()
        bases = yaml.safe_load(path.read_text()).get("_base_", [])
        for base in [bases] if isinstance(bases, str) else bases:
            base = (path.parent / base).resolve()
            assert base.is_file(), f"{path} names {base}"
            if base not in named:
                named.add(base)
                todo.append(base)
    assert BASES and sorted(named) == [p.resolve() for p in BASES]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_resolve_as_pinned(recipe):
    _same(load_config(recipe).to_dict(), RESOLVED[recipe.name])


def test_defaults_resolve_as_pinned():
    _same(load_config().to_dict(), RESOLVED["(defaults)"])


def test_values_follow_the_field_types():
    cfg = load_config(None, ["train.iters=1e3", "train.lr=1e-3", "train.epochs=2e1", "model.kwargs=null"])
    assert (cfg.train.iters, cfg.train.lr, cfg.train.epochs, cfg.model.kwargs) == (1000, 0.001, 20, {})
    assert type(cfg.train.iters) is int and type(cfg.train.lr) is float
    with pytest.raises(ConfigError, match=r"'train\.lr' in --set train\.lr=fast must be a number, got 'fast'"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"'train' in --set train=1 must be a mapping"):
        load_config(None, ["train=1"])
    with pytest.raises(ConfigError, match=r"'model\.kwarg'.*did you mean 'model\.kwargs'"):
        load_config(None, ["model.kwarg.x=1"])


def test_free_form_model_kwargs():
    cfg = load_config(None, ["model.kwargs={aux: true}"])  # the whole section
    assert cfg.model.kwargs == {"aux": True}
    # one key each
    cfg = load_config(None, ["model.kwargs.aux=true", "model.kwargs.encoder_kwargs={ceil_maxpool: true}"])
    assert cfg.model.kwargs == {"encoder": "resnet18", "output_stride": 8, "aux": True,
                                "encoder_kwargs": {"ceil_maxpool": True}}


def test_dumped_config_loads_back_equal(tmp_path):
    cfg = load_config(HERE.parents[1] / "configs" / "bam_resnet50_imagenet.yaml", ["model.kwargs.combine=sum"])
    (tmp_path / "c.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "c.yaml") == cfg


def test_a_dumped_config_says_which_length_governs(tmp_path):
    by_epochs = load_config(CONFIGS / "danet_cityscapes_769x769.yaml")
    lines = dump_config(by_epochs).splitlines()
    assert "  iters: 800  # not used: train.epochs sets the length" in lines and "  epochs: 240" in lines
    (tmp_path / "c.yaml").write_text(dump_config(by_epochs))
    assert load_config(tmp_path / "c.yaml") == by_epochs
    by_steps = dump_config(load_config()).splitlines()
    assert "  iters: 800" in by_steps and "  epochs: null" in by_steps and not any("#" in line for line in by_steps)
