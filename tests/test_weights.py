"""load_official / load_weights / read_state_dict / save_state_dict: strictness, safety, atomic
writes, one-line errors naming the file."""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors import SafetensorError

import visattn
from helpers import randomize_
from visattn.weights import WeightsError, load_weights, read_state_dict, save_state_dict


def official_se_state(channels=32, seed=1):
    src = randomize_(visattn.create_attention("se", channels), seed)
    return src, {k: v.clone() for k, v in src.state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_round_trip_through_file(tmp_path, suffix):
    src, state = official_se_state()
    path = save_state_dict(state, tmp_path / f"se{suffix}")
    dst = visattn.load_official(visattn.create_attention("se", 32), path)
    x = torch.randn(2, 32, 5, 4)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_strips_module_prefix_and_unwraps_training_checkpoints():
    src, state = official_se_state()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    dst = visattn.load_official(visattn.create_attention("se", 32), wrapped)
    x = torch.randn(1, 32, 3, 3)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_missing_and_unexpected_keys_are_listed():
    _, state = official_se_state()
    state["fc3.weight"] = state.pop("fc2.weight")
    with pytest.raises(ValueError, match=r"missing keys \(1\): fc2.weight") as err:
        visattn.load_official(visattn.create_attention("se", 32), state)
    assert "unexpected keys (1): fc3.weight" in str(err.value)


def test_shape_mismatch_is_named():
    _, state = official_se_state(channels=64)
    with pytest.raises(ValueError, match="shape mismatches .*fc1.weight"):
        visattn.load_official(visattn.create_attention("se", 32), state)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint .*bad.safetensors"):
        read_state_dict(bad)
    truncated = tmp_path / "truncated.pth"
    save_state_dict({"w": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_state_dict(truncated)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    torch.save({"w": _Evil()}, tmp_path / "evil_zip.pth")
    for file in (path, tmp_path / "evil_zip.pth"):
        refusal = f"checkpoint {file} holds objects other than tensors and plain data" + (
            r"( \(.*print\))?; not loaded, since unpickling them could run code")
        with pytest.raises(WeightsError, match=refusal) as err:
            read_state_dict(file)
        assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    assert "code ran" not in capsys.readouterr().out


def test_non_tensor_entries_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="not tensors: epoch"):
        read_state_dict({"w": torch.ones(1), "epoch": 3})
    path = tmp_path / "with_epoch.pth"
    torch.save({"w": torch.ones(1), "epoch": 3}, path)
    with pytest.raises(WeightsError, match=r"checkpoint .*with_epoch\.pth: entries are not tensors: epoch"):
        read_state_dict(path)


@pytest.mark.parametrize("content, kind", [([torch.ones(2)], "list"), (torch.ones(2), "Tensor"), (3, "int")])
def test_a_file_without_a_state_dict_is_named(tmp_path, content, kind):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(WeightsError, match=rf"checkpoint .*odd\.pth holds a {kind}, not a mapping") as err:
        read_state_dict(path)
    assert "\n" not in str(err.value)


def test_load_weights_names_the_file_and_the_keys(tmp_path):
    src, state = official_se_state()
    path = save_state_dict(state, tmp_path / "se.safetensors")
    dst = load_weights(visattn.create_attention("se", 32), path)
    x = torch.randn(2, 32, 3, 3)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)

    state["fc3.weight"] = state.pop("fc2.weight")
    path = save_state_dict(state, tmp_path / "renamed.pth")
    with pytest.raises(WeightsError) as err:
        load_weights(visattn.create_attention("se", 32), path)
    message = str(err.value)
    assert message.startswith(f"cannot load weights {path} into SqueezeExcite: ")
    assert "missing keys (1): fc2.weight" in message and "unexpected keys (1): fc3.weight" in message
    assert "\n" not in message
    _, wider = official_se_state(channels=64)
    expected = r"shape mismatches \(4\): fc1.weight: checkpoint \(4, 64, 1, 1\) vs model \(2, 32, 1, 1\); "
    with pytest.raises(WeightsError, match=expected):
        load_weights(visattn.create_attention("se", 32), wider)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_write_honours_the_umask(tmp_path, umask, mode):
    import os

    from visattn.weights import atomic_write

    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "f.txt", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("error", [  # what torch.save and safetensors raise on a full disk
    RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed"),
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
])
def test_a_failed_write_is_an_os_error_naming_the_file_and_leaves_nothing(tmp_path, error):
    import os

    from visattn.weights import atomic_write

    def full_disk(tmp):
        open(tmp, "w").write("half")
        raise error

    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'a.pt'}: .*(file write failed|No space left)") as err:
        atomic_write(tmp_path / "a.pt", full_disk)
    assert "\n" not in str(err.value) and os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_saved_weights_honour_the_umask(tmp_path, suffix):
    import os

    from visattn.weights import save_state_dict

    old = os.umask(0o022)
    try:
        path = save_state_dict({"w": torch.zeros(2)}, tmp_path / f"w{suffix}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
