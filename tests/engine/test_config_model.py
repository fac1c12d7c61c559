"""The model section of a config: a model's name decides its arguments (``--set model.name=X`` drops
the arguments set for the previous model), the class count and the whole-model weights have one key
each, and the run header says how many parameters the built model has."""
import pytest
import torch

import tinyseg
from visattn import create_model
from visattn.cli import main
from visattn.engine.build import build_model
from visattn.engine.config import ConfigError, load_config

TINY = ["model.name=tinyseg:build", "model.kwargs={}", "data.digits.train_length=8", "data.digits.val_length=4",
        "data.digits.size=32", "data.digits.digit_size=[8,16]", "data.crop_size=[32,32]", "train.batch_size=4",
        "train.iters=1", "train.eval_every=null", "eval.batch_size=4"]


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_parameters(cfg, num_classes: int = 11) -> int:
    with torch.device("meta"):
        return _parameters(build_model(cfg.model, num_classes, pretrained=False))


def test_setting_the_model_name_builds_that_model_not_the_defaults_encoder():
    cfg = load_config(None, ["model.name=danet_r101_d8"])
    assert cfg.model.kwargs == {}
    with torch.device("meta"):
        paper = _parameters(create_model("danet_r101_d8", num_classes=11))
    built = _meta_parameters(cfg)
    assert built == paper and 65e6 < built < 70e6  # the ResNet-101 DANet, not the demo's ResNet-18 (12.7 M)
    assert _meta_parameters(load_config()) < 15e6


def test_a_classifier_named_by_override_gets_none_of_the_segmentors_arguments():
    cfg = load_config(None, ["model.name=cbam_resnet50", "task=classification", "data.dataset=digits_cls"])
    assert cfg.model.name == "cbam_resnet50" and cfg.model.kwargs == {}


@pytest.mark.parametrize("overrides", [
    ["model.name=ccnet", "model.kwargs.encoder=resnet34"],
    ["model.kwargs.encoder=resnet34", "model.name=ccnet"],
    ["model.kwargs={encoder: resnet34}", "model.name=ccnet"],
])
def test_arguments_set_with_the_name_stay_whatever_their_order(overrides):
    assert load_config(None, overrides).model.kwargs == {"encoder": "resnet34"}


def test_the_same_name_keeps_the_arguments():
    assert load_config(None, ["model.name=danet"]).model.kwargs == {"encoder": "resnet18", "output_stride": 8}


def test_a_recipe_naming_another_model_gets_none_of_the_defaults_arguments(tmp_path):
    recipe = tmp_path / "ccnet.yaml"
    recipe.write_text("model:\n  name: ccnet\n")
    assert load_config(recipe).model.kwargs == {}
    recipe.write_text("model:\n  name: ccnet\n  kwargs: {encoder: resnet18}\n")
    assert load_config(recipe).model.kwargs == {"encoder": "resnet18"}
    # an override naming the recipe's model keeps the recipe's arguments
    assert load_config(recipe, ["model.name=ccnet"]).model.kwargs == {"encoder": "resnet18"}


@pytest.mark.parametrize("override, right_key", [
    ("model.kwargs.num_classes=5", "data.num_classes"),
    ("model.kwargs.pretrained=true", "model.pretrained"),
])
def test_builder_arguments_with_a_key_of_their_own_are_refused(override, right_key, capsys):
    with pytest.raises(ConfigError, match=rf"^config key '{override.split('=')[0]}' is set by {right_key}\b"):
        load_config(None, [override])
    assert main(["train", "--print-config", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and right_key in err and "Traceback" not in err


def test_a_built_in_datasets_classes_are_its_own(capsys):
    with pytest.raises(ConfigError, match=r"^config key 'data\.num_classes' must be null for dataset 'digits', "
                                          r"which has its own 11 classes .*got 5$"):
        load_config(None, ["data.num_classes=5"])
    with pytest.raises(ConfigError, match=r"^config key 'data\.classes' must be null for dataset 'digits'"):
        load_config(None, ["data.classes=[a, b]"])
    assert main(["train", "--print-config", "--set", "data.num_classes=5"]) == 2
    assert "'data.num_classes'" in capsys.readouterr().err
    assert load_config(None, ["data.num_classes=11"]).data.num_classes == 11  # what it has: allowed
    folder = load_config(None, ["data.dataset=folder", "data.root=somewhere", "data.num_classes=5"])
    assert folder.data.num_classes == 5


def test_the_run_header_gives_the_built_models_parameter_count(tmp_path, capsys):
    sets = [a for s in TINY + [f"run.dir={tmp_path / 'run'}"] for a in ("--set", s)]
    assert main(["train", "--trust-code", *sets]) == 0
    lines = capsys.readouterr().out.splitlines()
    count = _parameters(tinyseg.build(num_classes=11))
    assert f"model tinyseg:build: {count:,} parameters" in lines


@pytest.mark.parametrize("overrides, message", [
    (["model.name=cbam_resnet50"], r"^config key 'model\.name' must be a segmentor for task 'segmentation' "
                                   r"\(cbam_resnet50 is a classifier: for it set task=classification with a "
                                   r"classification dataset \(digits_cls, imagefolder\)\), got 'cbam_resnet50'$"),
    (["task=classification", "data.dataset=digits_cls"],
     r"^config key 'model\.name' must be a classifier for task 'classification' \(danet is a segmentor"),
])
def test_the_model_is_of_the_tasks_kind(overrides, message, capsys):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    assert main(["train", "--print-config", *[a for s in overrides for a in ("--set", s)]]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
