"""Names read from configs and files become part of a file name only as a single path component."""
import pytest

from visattn.filenames import MAX_COMPONENT_LENGTH, UnsafeNameError, path_component


@pytest.mark.parametrize("name", ["val", "train_extra", "seed-0.v2", "é" * (MAX_COMPONENT_LENGTH // 2)])
def test_a_single_component_passes(name):
    assert path_component(name, "split") == name


@pytest.mark.parametrize("name, problem", [
    ("x/../../PWNED", "holds a path separator"), ("/etc", "holds a path separator"), ("a\\b", "holds a path separator"),
    (".", "names a directory"), ("..", "names a directory"), ("", "is empty"), ("a\nb", "holds a control character"),
    ("a\0b", "holds a control character"), ("é" * (MAX_COMPONENT_LENGTH // 2 + 1), "is longer than"),
    (3, "is a int, not a name"), (None, "is a NoneType, not a name")])
def test_anything_else_is_refused_naming_where_it_came_from(name, problem):
    with pytest.raises(UnsafeNameError, match=problem) as err:
        path_component(name, "data.val_split of run/config.yaml")
    assert str(err.value).startswith("data.val_split of run/config.yaml ") and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)
