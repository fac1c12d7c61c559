"""What reading a recipe or a --set value refuses instead of guessing: a key given twice, a base that
is a folder, a line break in a value."""
import pytest

from visattn.cli import main
from visattn.engine.config import ConfigError, apply_overrides, load_config
from visattn.bounded import load_yaml
from visattn.engine.config.schema import Config


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 0.01\n  iters: 3\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=rf"config file {recipe} is not valid YAML: line 4, column 3: key 'lr' is "
                                          r"given twice \(lines 2 and 4\)"):
        load_config(recipe)
    assert main(["train", "--config", str(recipe), "--print-config"]) == 2
    assert "key 'lr' is given twice (lines 2 and 4)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="key 'a' is given twice"):
        apply_overrides(Config(), ["model.kwargs={a: 1, a: 2}"])
    # the same key in two mappings is not a repeat
    assert load_yaml("base: {x: 1}\nother:\n  x: 3\n  y: 2\nlr: {x: 2}\n", "the text") == {
        "base": {"x": 1}, "other": {"x": 3, "y": 2}, "lr": {"x": 2}}


def test_a_base_that_is_a_folder_says_so(tmp_path):
    (tmp_path / "base.yaml").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("_base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"names the base 'base.yaml', which is not a file"):
        load_config(recipe)
    recipe.write_text("_base_: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"names the base 'gone.yaml', which does not exist"):
        load_config(recipe)


def test_a_line_break_in_a_set_value_is_refused_not_folded(tmp_path, capsys):
    run = tmp_path / "a\nb"
    assert main(["train", "--print-config", "--set", f"run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "the value holds a line break; --set takes one line" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a b").exists()
    assert apply_overrides(Config(), [f"run.dir={tmp_path / 'a b'}"]).run.dir == str(tmp_path / "a b")
