"""``create_model`` as timm's: keyword-only arguments, ``pretrained`` as the whole model's weights
(released or a local file, the classifier re-initialised when ``num_classes`` differs), segmentor
encoders through ``encoder_weights``, wildcards in ``list_models``. No test touches the network."""
import json
import socket
import warnings
from collections import OrderedDict

import pytest
import timm
import torch
from torch import nn

from helpers import randomize_
from visattn import create_model, list_models
from visattn.cli import main
from visattn.engine.build import build_model
from visattn.engine.config import ConfigError, ModelConfig, load_config
from visattn.models import registry
from visattn.models.segmentation import create_encoder
from visattn.weights import save_state_dict

pytestmark = pytest.mark.usefixtures("no_download")

# DANet's three classifier convs (``head.conv6/7/8``: Dropout2d, then the 1x1 conv)
DANET_CLASSIFIER = [f"head.conv{i}.1.{p}" for i in (6, 7, 8) for p in ("weight", "bias")]


def _built_with_seed(seed: int, name: str, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **kwargs)


def _class_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "classes" in str(w.message)]


def _assert_loaded(model: nn.Module, state: dict, fresh: nn.Module, new: list[str]) -> None:
    """Every tensor of ``model`` equals ``state``'s but those named ``new``, which equal ``fresh``'s."""
    got, initial = model.state_dict(), fresh.state_dict()
    for key, value in got.items():
        want = initial[key] if key in new else state[key]
        torch.testing.assert_close(value, want, rtol=0, atol=0, msg=key)


def test_official_file_with_other_classes_reinitialises_only_fc(tmp_path):
    # the authors' layout: a training checkpoint wrapping a DataParallel state dict, without the
    # BatchNorm step counters of PyTorch < 0.4
    state = randomize_(create_model("cbam_resnet50"), seed=1).state_dict()
    official = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "RESNET50_CBAM_new_name_wrap.pth"
    torch.save({"epoch": 90, "arch": "resnet", "state_dict": official}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _built_with_seed(0, "cbam_resnet50", pretrained=path, num_classes=10)
    assert _class_warnings(caught) == [
        "cbam_resnet50: the pretrained classifier has 1000 classes, the model 10: fc.weight, fc.bias start from "
        "a fresh initialisation"
    ]
    assert model.fc.weight.shape == (10, 2048)
    fresh = _built_with_seed(0, "cbam_resnet50", num_classes=10)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    _assert_loaded(model, state, fresh, ["fc.weight", "fc.bias", *counters])
    assert not torch.equal(model.fc.weight, state["fc.weight"][:10])


def test_own_state_dict_with_other_classes_reinitialises_every_classifier(tmp_path):
    src = randomize_(create_model("danet", encoder="resnet18"), seed=2)
    state = src.state_dict()
    path = save_state_dict(state, tmp_path / "danet.safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _built_with_seed(3, "danet", encoder="resnet18", pretrained=path, num_classes=5)
    (message,) = _class_warnings(caught)
    assert message.startswith("danet: the pretrained classifier has 19 classes, the model 5: ")
    assert message.split(": ")[2].removesuffix(" start from a fresh initialisation").split(", ") == DANET_CLASSIFIER
    _assert_loaded(model, state, _built_with_seed(3, "danet", encoder="resnet18", num_classes=5), DANET_CLASSIFIER)
    # the same classes: every tensor is the file's, and nothing is said
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = create_model("danet", encoder="resnet18", pretrained=str(path)).eval()
    assert not _class_warnings(caught)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(same(x), src.eval()(x), rtol=0, atol=0)


def test_other_differences_than_the_classes_are_errors(tmp_path):
    state = create_model("danet", encoder="resnet18").state_dict()
    state["head.conv5a.0.weight"] = torch.zeros(64, 512, 3, 3)
    path = save_state_dict(state, tmp_path / "danet.pth")
    mismatch = r"shape mismatches \(1\): head\.conv5a\.0\.weight: checkpoint \(64, 512, 3, 3\)"
    with pytest.raises(ValueError, match=mismatch) as err:
        create_model("danet", encoder="resnet18", pretrained=path, num_classes=5)
    assert str(err.value).startswith(f"danet: cannot load pretrained file {path}: ")
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): encoder\.layer1\.2\."):
        create_model("danet", encoder="resnet18", pretrained=save_state_dict(
            create_model("danet", encoder="resnet34").state_dict(), tmp_path / "r34.pth"))


def test_arguments_after_the_name_are_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        create_model("cbam_resnet50", 10)


@pytest.mark.parametrize(
    "name, where",
    [
        ("epsanet50", "https://github.com/murufeng/EPSANet"),
        ("sge_resnet50", "https://github.com/implus/PytorchInsight"),
        ("danet_r101_d8", "https://github.com/junfu1115/DANet"),
        ("nlnet_r50_d8", "https://github.com/open-mmlab/mmsegmentation/tree/main/configs/nonlocal_net"),
    ],
)
def test_pretrained_true_without_a_download_names_where_to_get_the_weights(name, where):
    with pytest.raises(ValueError) as err:
        create_model(name, pretrained=True)
    message = str(err.value)
    assert message.startswith(f"{name}: the released weights have no direct download; download them from {where}")
    assert "visattn.load_official(model, path)" in message and "pretrained=path" in message


def test_pretrained_true_without_released_weights_points_to_encoder_weights():
    with pytest.raises(ValueError, match=r"^danet: no released weights; .*encoder_weights='imagenet'"):
        create_model("danet", pretrained=True)


def test_pretrained_true_downloads_through_torch_hub_with_the_hash(monkeypatch):
    class Tiny(nn.Sequential):
        def __init__(self, num_classes: int = 3) -> None:
            super().__init__(OrderedDict(conv=nn.Conv2d(3, 4, 1), pool=nn.AdaptiveAvgPool2d(1),
                                         flat=nn.Flatten(), fc=nn.Linear(4, num_classes)))

    released = randomize_(Tiny(), seed=4).state_dict()
    calls = []

    def fetch(url, **kwargs):
        calls.append((url, kwargs))
        return {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in released.items()}}

    sha256 = "0123456789abcdef" * 4
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
    monkeypatch.setitem(registry._MODELS, "tiny", Tiny)
    monkeypatch.setitem(registry._WEIGHTS, "tiny", registry.Weights(
        "https://example.org/tiny", "https://example.org/files/tiny.pth.tar?dl=1", sha256))
    model = create_model("tiny", pretrained=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, released[key], rtol=0, atol=0, msg=key)
    assert calls == [("https://example.org/files/tiny.pth.tar?dl=1", {
        "map_location": "cpu", "weights_only": True, "check_hash": True, "file_name": f"tiny-{sha256}.pth.tar"})]
    with pytest.warns(UserWarning, match="fc.weight, fc.bias start from a fresh initialisation"):
        assert create_model("tiny", pretrained=True, num_classes=2).fc.weight.shape == (2, 4)


def test_list_models_takes_wildcards_and_substrings():
    assert list_models("danet*") == ["danet", "danet_r101_d8", "danet_r50_d8"]
    assert list_models("*_r101_d8") == ["ann_r101_d8", "ccnet_r101_d8", "danet_r101_d8", "deeplabv3_r101_d8",
                                        "deeplabv3plus_r101_d8", "dnlnet_r101_d8", "emanet_r101_d8", "fcn_r101_d8",
                                        "flanet_r101_d8", "gcnet_r101_d8", "isanet_r101_d8", "nlnet_r101_d8",
                                        "ocrnet_r101_d8", "pspnet_r101_d8"]
    assert list_models("fcn_r?0_d8") == ["fcn_r50_d8"]
    assert list_models("danet") == list_models("danet*")
    assert "ccnet_r50_d8" in list_models("r50") and list_models("danet?") == []


def test_models_command_shows_released_weights(capsys):
    assert main(["models", "*resnet50"]) == 0
    rows = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert rows == {"bam_resnet50": "download", "cbam_resnet50": "download", "se_resnet50": "manual",
                    "sge_resnet50": "manual"}
    assert main(["models", "danet"]) == 0
    assert [line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:-1]] == ["-", "manual", "-"]


def test_encoder_weights_imagenet_asks_timm_for_its_weights(monkeypatch):
    asked = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **kw: [])  # online: the Hub's host resolves
    monkeypatch.setattr(timm.models._builder, "load_pretrained", lambda model, *a, **kw: asked.append(model))
    create_model("fcn", encoder="resnet18", encoder_weights="imagenet")
    assert len(asked) == 1
    create_model("fcn", encoder="resnet18")
    assert len(asked) == 1


def test_encoder_names_with_a_pretrained_tag_or_a_hub_id(tmp_path, monkeypatch):
    path = save_state_dict(randomize_(timm.create_model("resnet18"), seed=5).state_dict(), tmp_path / "r18.pth")
    tagged = create_model("danet", encoder="resnet18.a1_in1k", encoder_weights=path)
    plain = create_model("danet", encoder="resnet18", encoder_weights=path)
    for key, value in plain.encoder.state_dict().items():
        torch.testing.assert_close(tagged.encoder.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # a Hub id resolves through timm, which reads the repo's config.json (here from a local folder)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000}))
    repos = []

    def config_from_hub(model_id, cache_dir=None):
        repos.append(model_id)
        return timm.models._hub.load_model_config_from_path(tmp_path)

    monkeypatch.setattr(timm.models._factory, "load_model_config_from_hf", config_from_hub)
    encoder = create_encoder("hf-hub:timm/resnet18.a1_in1k")
    assert repos == ["timm/resnet18.a1_in1k"]
    assert encoder.feature_info.channels() == [128, 256, 512]
    with pytest.raises(ValueError, match="unknown encoder 'resnet18x'"):
        create_encoder("resnet18x")


def test_configs_and_trained_runs_leave_encoder_weights_unread(tmp_path):
    message = r"'model\.kwargs\.encoder_weights' must be null, imagenet or an existing file"
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.kwargs.encoder_weights=no/such.pth"])
    assert load_config(None, ["model.kwargs.encoder_weights=imagenet"]).model.kwargs["encoder_weights"] == "imagenet"
    cfg = ModelConfig(kwargs={"encoder": "resnet18", "encoder_weights": "imagenet"})
    assert build_model(cfg, 2, pretrained=False).encoder is not None  # timm's weights not asked for


@pytest.mark.parametrize("argument, value, hint", [
    ("features_only", True, "create_encoder(name, output_stride)"),
    ("encoder_name", "resnet18", "encoder="),
    ("classes", 5, "num_classes="),
    ("in_channels", 4, "in_chans="),
    ("no_such_argument", 1, None),
])
def test_an_unknown_argument_names_the_model_and_what_it_takes(argument, value, hint):
    with pytest.raises(registry.ModelArgumentError) as err:
        create_model("danet", encoder="resnet18", **{argument: value})
    message = str(err.value)
    assert message.startswith(f"model 'danet' takes no argument {argument!r}") and "\n" not in message
    assert (hint in message) if hint else f"{argument!r}; it takes: " in message
    takes = message.split("; it takes: ")[1].split(", ")
    assert {"encoder", "encoder_weights", "output_stride", "aux", "in_chans", "reduction"} <= set(takes)
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)


def test_an_argument_the_builder_sets_itself_is_named():
    with pytest.raises(registry.ModelArgumentError, match=r"^model 'bam_resnet50' takes no argument 'stage_attn' "
                                                          r"\(the model sets it itself\)"):
        create_model("bam_resnet50", stage_attn="se")


def test_in_chans_is_the_images_channels_as_in_timm():
    model = create_model("danet", encoder="resnet18", in_chans=4).eval()
    assert model.encoder.conv1.in_channels == 4
    with torch.no_grad():
        assert model(torch.randn(1, 4, 32, 32)).shape == (1, 19, 32, 32)
    assert create_model("danet", encoder="resnet18", encoder_kwargs={"in_chans": 1}).encoder.conv1.in_channels == 1


def test_names_are_found_whatever_their_case():
    assert type(create_model("DANet", encoder="resnet18")) is type(create_model("danet", encoder="resnet18"))
    with pytest.raises(ValueError, match=r"unknown model 'DANetX'\. Did you mean 'danet'"):
        create_model("DANetX")
