"""Pretrained weights from local files: segmentor encoders and classifiers load them strictly.

A file that does not fit is a ``ValueError`` naming the file and the keys that differ; a path is
never taken for ``True``/``"imagenet"`` (which download). No test touches the network.
"""
from pathlib import Path

import pytest
import timm
import torch

from visattn import create_model
from visattn.models.segmentation import create_encoder
from visattn.weights import save_state_dict

pytestmark = pytest.mark.usefixtures("no_download")


def _timm_checkpoint(tmp_path: Path, name: str, suffix: str = ".pth", seed: int = 0) -> tuple[Path, dict]:
    torch.manual_seed(seed)
    state = timm.create_model(name).state_dict()
    return save_state_dict(state, tmp_path / f"{name}{suffix}"), state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_file_loads_every_weight_and_drops_the_classifier(tmp_path, suffix):
    path, state = _timm_checkpoint(tmp_path, "resnet18", suffix)
    encoder = create_encoder("resnet18", pretrained_file=path).state_dict()
    assert set(encoder) == set(state) - {"fc.weight", "fc.bias"}
    for key, value in encoder.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_encoder_file_with_flattened_feature_stages(tmp_path):
    # timm's feature extractor renames convnext's ``stages.0`` to ``stages_0``; its ``head`` is dropped
    path, state = _timm_checkpoint(tmp_path, "convnext_atto")
    encoder = create_encoder("convnext_atto", output_stride=16, pretrained_file=path).state_dict()
    key = "stages.1.blocks.0.conv_dw.weight"
    torch.testing.assert_close(encoder[key.replace(".", "_", 1)], state[key], rtol=0, atol=0)
    assert not any(k.startswith("head") for k in encoder)


@pytest.mark.parametrize("as_path", [str, Path])
def test_segmentor_encoder_weights_path_is_a_file_not_imagenet(tmp_path, as_path):
    path, state = _timm_checkpoint(tmp_path, "resnet18")
    model = create_model("danet", encoder="resnet18", encoder_weights=as_path(path))
    encoder = model.encoder.state_dict()
    assert set(encoder) == set(state) - {"fc.weight", "fc.bias"}
    for key, value in encoder.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    with pytest.raises(FileNotFoundError, match="no.pth"):
        create_model("danet", encoder="resnet18", encoder_weights=as_path(tmp_path / "no.pth"))


@pytest.mark.parametrize(
    "other, expected",
    [
        ("resnet34", r": unexpected keys \(96\): layer1\.2\.bn1\.bias, "),  # more blocks, same widths
        ("resnet50", r"shape mismatches \(\d+\): .*layer1\.0\.conv1\.weight: checkpoint \(64, 64, 1, 1\) vs model \(64, 64, 3, 3\)"),
        ("convnext_atto", r"missing keys \(\d+\): bn1\.bias, .*conv1\.weight.* \| unexpected keys \(128\): head\.fc\.bias, .*stages\.0\."),
    ],
)
def test_unrelated_encoder_file_is_an_error_naming_it(tmp_path, other, expected):
    path, _ = _timm_checkpoint(tmp_path, other)
    with pytest.raises(ValueError, match=expected) as err:
        create_model("danet", encoder="resnet18", pretrained_file=path)
    assert f"pretrained file {path} does not fit encoder 'resnet18'" in str(err.value)


def test_segmentor_checkpoint_is_not_an_encoder_file(tmp_path):
    path = save_state_dict(create_model("fcn", encoder="resnet18").state_dict(), tmp_path / "fcn.safetensors")
    with pytest.raises(ValueError, match=r"missing keys .* \| unexpected keys \(\d+\): encoder\."):
        create_encoder("resnet18", pretrained_file=path)


def test_ambiguous_pretrained_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="give one file"):
        create_encoder("resnet18", pretrained=str(tmp_path / "a.pth"), pretrained_file=tmp_path / "b.pth")
    with pytest.raises(ValueError, match="give one file"):
        create_model("fcn", encoder="resnet18", encoder_weights=tmp_path / "a.pth", pretrained_file=tmp_path / "b")
    with pytest.raises(TypeError, match="encoder_weights must be None, 'imagenet' or a file path, got True"):
        create_model("fcn", encoder="resnet18", encoder_weights=True)
    with pytest.raises(TypeError, match="True, False or a file path, got 1"):
        create_model("fcn", encoder="resnet18", pretrained=1)
    with pytest.raises(TypeError, match="True, False or a file path, got 1"):
        create_model("se_resnet50", pretrained=1)


def test_classifier_file_that_does_not_fit_names_it(tmp_path):
    path = save_state_dict({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=r"missing keys .* \| unexpected keys \(1\): head\.weight") as err:
        create_model("se_resnet50", pretrained=str(path))
    assert str(err.value).startswith(f"se_resnet50: cannot load pretrained file {path}:")
