"""Recipes that build on other files (``_base_``): bases merged depth-first in order under the
including file, mappings key by key (``model.kwargs`` too), lists and scalars replaced, paths
relative to the file naming them; missing, malformed and cyclic bases named; and ``visattn train
--print-config``, whose YAML loads back to the same config."""
import textwrap

import pytest
import yaml

from visattn.cli import main
from visattn.engine.config import Config, ConfigError, dump_config, load_config, read_recipe


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_bases_merge_in_order_under_the_recipe(tmp_path):
    write(tmp_path / "a.yaml", """
        train: {lr: 0.1, iters: 10, warmup_iters: 5}
        data: {digits: {size: 32, seed: 1}}
        eval: {scales: [0.5, 1.0, 1.5]}
        """)
    write(tmp_path / "b.yaml", """
        train: {lr: 0.2}
        data: {digits: {size: 48, digits_per_image: [1, 3]}}
        """)
    recipe = write(tmp_path / "r.yaml", """
        _base_: [a.yaml, b.yaml]
        train: {iters: 20}
        data: {digits: {digits_per_image: [3, 5]}}
        eval: {scales: [2.0]}
        """)
    assert read_recipe(recipe) == {
        "train": {"lr": 0.2, "iters": 20, "warmup_iters": 5},  # b over a, the recipe over both
        "data": {"digits": {"size": 48, "seed": 1, "digits_per_image": [3, 5]}},  # nested keys merged
        "eval": {"scales": [2.0]},  # lists replaced, not appended
    }
    cfg, defaults = load_config(recipe), Config()
    assert (cfg.train.lr, cfg.train.iters, cfg.train.warmup_iters) == (0.2, 20, 5)
    assert (cfg.data.digits.size, cfg.data.digits.seed, cfg.data.digits.digits_per_image) == (48, 1, [3, 5])
    assert cfg.eval.scales == [2.0]
    assert cfg.train.batch_size == defaults.train.batch_size and cfg.data.digits.digit_size == [12, 24]


def test_bases_are_merged_depth_first(tmp_path):
    # r: [a, c], a: [b]. Depth-first the order is b, a, c, r (breadth-first would put b after c).
    write(tmp_path / "b.yaml", "train: {lr: 0.1, iters: 10, seed: 1, log_every: 1}\n")
    write(tmp_path / "a.yaml", "_base_: b.yaml\ntrain: {lr: 0.2, warmup_iters: 2}\n")
    write(tmp_path / "c.yaml", "train: {iters: 30, warmup_iters: 3}\n")
    recipe = write(tmp_path / "r.yaml", "_base_: [a.yaml, c.yaml]\ntrain: {seed: 4}\n")
    assert read_recipe(recipe)["train"] == {"lr": 0.2, "iters": 30, "seed": 4, "log_every": 1, "warmup_iters": 3}
    # the base's own bases come before it, wherever it is listed
    recipe = write(tmp_path / "s.yaml", "_base_: [c.yaml, a.yaml]\n")
    assert read_recipe(recipe)["train"] == {"iters": 10, "warmup_iters": 2, "lr": 0.2, "seed": 1, "log_every": 1}


def test_base_paths_are_relative_to_the_file_naming_them(tmp_path, monkeypatch):
    write(tmp_path / "bases/schedules/long.yaml", "train: {iters: 1000}\n")
    write(tmp_path / "bases/models/m.yaml", "_base_: ../schedules/long.yaml\nmodel: {name: fcn}\n")
    recipe = write(tmp_path / "recipes/r.yaml", "_base_: ../bases/models/m.yaml\n")
    cfg = load_config(recipe)
    assert (cfg.model.name, cfg.train.iters) == ("fcn", 1000)
    monkeypatch.chdir(tmp_path / "bases")  # not the working directory's
    assert load_config(recipe) == cfg
    monkeypatch.chdir(tmp_path)  # a relative recipe path, as typed on a command line
    assert load_config("recipes/r.yaml") == cfg


def test_model_kwargs_merge_along_the_chain_and_replace_the_defaults(tmp_path):
    write(tmp_path / "model.yaml", "model: {name: danet, kwargs: {encoder: resnet18, aux: true}}\n")
    recipe = write(tmp_path / "r.yaml", "_base_: model.yaml\nmodel: {kwargs: {output_stride: 16}}\n")
    assert load_config(recipe).model.kwargs == {"encoder": "resnet18", "aux": True, "output_stride": 16}
    # the defaults' output_stride 8 is not merged in: the recipe chain describes the model
    assert load_config(tmp_path / "model.yaml").model.kwargs == {"encoder": "resnet18", "aux": True}
    assert Config().model.kwargs == {"encoder": "resnet18", "output_stride": 8}
    # null replaces, as any scalar: the chain's arguments are dropped
    recipe = write(tmp_path / "cleared.yaml", "_base_: model.yaml\nmodel: {kwargs: null}\n")
    assert load_config(recipe).model.kwargs == {}
    # --set still sets one key, or replaces the whole mapping
    recipe = tmp_path / "r.yaml"
    assert load_config(recipe, ["model.kwargs.aux=false"]).model.kwargs == {"encoder": "resnet18", "aux": False,
                                                                           "output_stride": 16}
    assert load_config(recipe, ["model.kwargs={encoder: resnet18}"]).model.kwargs == {"encoder": "resnet18"}


def test_a_cycle_is_an_error_naming_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "_base_: sub/b.yaml\n")
    write(tmp_path / "sub/b.yaml", "_base_: ../a.yaml\n")
    recipe = write(tmp_path / "r.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"in a cycle: \S*r\.yaml -> \S*a\.yaml -> \S*sub/b\.yaml -> \S*a\.yaml$"):
        load_config(recipe)
    write(tmp_path / "self.yaml", "_base_: [common.yaml, self.yaml]\n")
    write(tmp_path / "common.yaml", "train: {iters: 2, seed: 5}\n")
    with pytest.raises(ConfigError, match=r"in a cycle: \S*self\.yaml -> \S*self\.yaml$"):
        load_config(tmp_path / "self.yaml")
    # a base two files share (a diamond) is no cycle
    write(tmp_path / "x.yaml", "_base_: common.yaml\n")
    write(tmp_path / "y.yaml", "_base_: common.yaml\ntrain: {iters: 3}\n")
    assert read_recipe(write(tmp_path / "d.yaml", "_base_: [x.yaml, y.yaml]\n")) == {"train": {"iters": 3, "seed": 5}}


# (files, the recipe loaded, the error): each case in a folder of its own
BAD_BASES = {
    "missing base": ({"a.yaml": "_base_: [nowhere/gone.yaml]\n", "r.yaml": "_base_: a.yaml\n"},
                     r"config file \S*a\.yaml names the base 'nowhere/gone\.yaml', which does not exist "
                     r"\(\S*nowhere/gone\.yaml\)"),
    "base is a list": ({"list.yaml": "- train\n- model\n", "r.yaml": "_base_: list.yaml\n"},
                       r"config file \S*list\.yaml must hold a mapping of sections, not a list"),
    "base is broken YAML": ({"broken.yaml": "train: {lr: [0.1}\n", "r.yaml": "_base_: broken.yaml\n"},
                            r"config file \S*broken\.yaml is not valid YAML: line 1"),
    "_base_ is a mapping": ({"r.yaml": "_base_: {x: 1}\n"},
                            r"'_base_' in \S*r\.yaml must be a file name or a list of file names, got \{'x': 1\}"),
    "unknown key in a base": (
        {"bases/schedule.yaml": "train:\n  lr: 0.1\n  warmup_iter: 5\n",
         "r.yaml": "_base_: bases/schedule.yaml\ntrain: {iters: 5}\n"},
        r"unknown config key 'train\.warmup_iter' in \S*bases/schedule\.yaml \(did you mean 'train\.warmup_iters'\?\)"),
    "unknown key in a base's base": (
        {"bases/schedule.yaml": "train:\n  warmup_iter: 5\n", "bases/nested.yaml": "_base_: schedule.yaml\n",
         "r.yaml": "_base_: bases/nested.yaml\n"},
        r"'train\.warmup_iter' in \S*bases/schedule\.yaml"),
}


@pytest.mark.parametrize("files, error", BAD_BASES.values(), ids=BAD_BASES)
def test_bad_bases_are_named_with_the_file_they_are_in(tmp_path, files, error):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=error):
        load_config(tmp_path / "r.yaml")


def test_a_missing_recipe_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config file not found: \S*absent\.yaml"):
        load_config(tmp_path / "absent.yaml")


def test_print_config_prints_the_resolved_config_and_creates_nothing(tmp_path, monkeypatch, capsys):
    write(tmp_path / "bases/data.yaml", "data: {digits: {size: 48, train_length: 16}}\n")
    recipe = write(tmp_path / "r.yaml", "_base_: bases/data.yaml\ntrain: {iters: 7}\n")
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    overrides = ["--set", "train.lr=0.05", "--set", "data.digits.seed=3"]
    assert main(["train", "--config", "r.yaml", *overrides, "--output", "run", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert sorted(tmp_path.rglob("*")) == before  # no run directory, no runs/
    assert "_base_" not in out
    expected = load_config(recipe, ["train.lr=0.05", "data.digits.seed=3", "run.dir=run"])
    assert out == dump_config(expected)
    (tmp_path / "printed.yaml").write_text(out)
    assert load_config(tmp_path / "printed.yaml") == expected
    printed = yaml.safe_load(out)
    assert (printed["train"]["iters"], printed["train"]["lr"], printed["data"]["digits"]["size"]) == (7, 0.05, 48)


def test_print_config_reports_a_bad_recipe(tmp_path, capsys):
    recipe = write(tmp_path / "r.yaml", "_base_: gone.yaml\n")
    assert main(["train", "--config", str(recipe), "--print-config"]) == 2
    assert "names the base 'gone.yaml'" in capsys.readouterr().err
