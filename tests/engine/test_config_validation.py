"""Config validation: every invalid value is a one-line ConfigError naming the key and its allowed
range, raised while the config is resolved; the CLI turns it into exit code 2 before any run
directory, data or model exists."""
import dataclasses
import re

import pytest
import torch

from visattn.cli import main
from visattn.engine.config import RULES, Config, ConfigError, load_config, validate_config

LOSS_RANGE = "null or a mapping of ce, ohem, dice, focal, lovasz to numbers >= 0, not all 0"
CLASS_WEIGHTS_RANGE = ("null or median_frequency, inverse_sqrt_frequency or a list of numbers >= 0, one per class, "
                       "not all 0")

# allowed range -> (override, the value as the message shows it); the key is the override's
INVALID = {
    "a number > 0": [
        ("train.lr=0", "0"), ("train.lr=-1e-3", "-0.001"), ("train.lr=.inf", "inf"), ("train.lr=true", "True"),
    ],
    "an integer > 0": [
        ("train.batch_size=0", "0"), ("train.batch_size=2.5", "2.5"), ("train.batch_size='2.5'", "2.5"),
        ("train.iters=0", "0"), ("train.iters=-5", "-5"), ("train.ckpt_every=0", "0"), ("train.log_every=0", "0"),
        ("train.keep_ckpts=0", "0"), ("train.accum_steps=0", "0"), ("eval.batch_size=0", "0"),
    ],
    "null or an integer > 0": [("train.epochs=0", "0"), ("train.eval_every=0", "0")],
    "an integer >= 0": [("train.warmup_iters=-1", "-1"), ("train.seed=-1", "-1"), ("data.workers=-1", "-1")],
    "two numbers in [0, 1)": [
        ("train.betas=abc", "'abc'"), ("train.betas=[0.9, 1.0]", "[0.9, 1.0]"), ("train.betas=[0.9]", "[0.9]"),
    ],
    "a number in [0, 1)": [("train.momentum=1", "1"), ("train.label_smoothing=1", "1")],
    "a number >= 0": [("train.weight_decay=-0.1", "-0.1"), ("train.focal_gamma=-1", "-1")],
    "a number in [0, 1]": [("train.warmup_factor=1.5", "1.5"), ("train.ohem_thresh=2", "2")],
    "a list of integers > 0": [("train.lr_steps=[30, 0]", "[30, 0]")],
    "one of sgd, adamw": [("train.optimizer=adam", "'adam'")],
    "one of poly, step": [("train.schedule=cosine", "'cosine'")],
    "null or one of bf16, fp16": [("train.amp=fp8", "'fp8'")],
    "auto, cpu, cuda, cuda:N or mps": [("train.device=tpu", "'tpu'")],
    "true or false": [
        ("train.deterministic=3", "3"), ("model.pretrained=yes please", "'yes please'"),
        ("train.grad_checkpointing=3", "3"), ("train.channels_last=nchw", "'nchw'"), ("train.compile=1", "1"),
    ],
    "null or a mapping of output names to numbers >= 0": [("train.loss_weights={out: -1}", "{'out': -1}")],
    LOSS_RANGE: [
        ("train.loss={dice: -1}", "{'dice': -1}"), ("train.loss={bogus: 1}", "{'bogus': 1}"),
        ("train.loss={ce: 0, dice: 0}", "{'ce': 0, 'dice': 0}"), ("train.loss={}", "{}"),
    ],
    "null or a mapping": [("train.loss=[ce, dice]", "['ce', 'dice']")],
    CLASS_WEIGHTS_RANGE: [
        ("train.class_weights=bogus", "'bogus'"), ("train.class_weights=[]", "[]"),
        ("train.class_weights=[1, -0.5]", "[1, -0.5]"), ("train.class_weights=[0, 0.0]", "[0, 0.0]"),
    ],
    "one of segmentation, classification": [("task=detection", "'detection'")],
    "one of digits, cityscapes": [("data.dataset=cifar", "'cifar'")],
    "an integer > 0 or [height, width], integers > 0": [
        ("data.crop_size=[0, 64]", "[0, 64]"), ("data.crop_size=[64]", "[64]"),
    ],
    "[low, high], numbers with 0 < low <= high": [("data.scale_range=[2, 1]", "[2, 1]")],
    "three numbers > 0 (R, G, B)": [("data.std=[1, 0, 1]", "[1, 0, 1]")],
    "null or an integer in [1, 100000]": [
        ("data.num_classes=0", "0"), ("data.num_classes=1000000000000", "1000000000000"),
    ],
    "null or a string": [("data.root=3", "3")],
    "[low, high], integers with 1 <= low <= high": [("data.digits.digit_size=[20, 10]", "[20, 10]")],
    "a non-empty list of at most 16 numbers > 0": [("eval.scales=[]", "[]")],
    "one of whole, slide": [("eval.mode=tiles", "'tiles'")],
    "null or [height, width], integers > 0": [("eval.crop_size=[64]", "[64]"), ("eval.stride=[0, 8]", "[0, 8]")],
    "a registered model or 'package.module:builder' (did you mean danet": [("model.name=danett", "'danett'")],
    "a number in [0, train.lr] = [0, 0.002]": [("train.min_lr=1", "1")],
    "[low, high], integers with 1 <= low <= high <= data.digits.size = 64": [
        ("data.digits.digit_size=[8, 100]", "[8, 100]"),
    ],
    "null or a number > 0": [("train.clip_grad=0", "0"), ("train.clip_grad=-1.5", "-1.5")],
    "null or a number in [0, 1)": [("train.ema=1.0", "1.0"), ("train.ema=-0.1", "-0.1"), ("train.ema=true", "True")],
}
INVALID_CASES = [(override, allowed, shown) for allowed, cases in INVALID.items() for override, shown in cases]


@pytest.mark.parametrize("override, allowed, shown", INVALID_CASES, ids=[case[0] for case in INVALID_CASES])
def test_invalid_value_names_key_and_range(override, allowed, shown):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    key = override.split("=")[0]
    assert message.startswith(f"config key {key!r} must be {allowed}"), message
    assert message.endswith(f", got {shown}") and "\n" not in message


def test_relation_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^config key 'train\.batch_size' must be a multiple of train\.accum_steps "
                                          r"x processes = 3 x 1, got 8$"):
        load_config(None, ["train.accum_steps=3"])
    with pytest.raises(ConfigError, match=r"^config key 'train\.nesterov' must be false when train\.momentum is 0"):
        load_config(None, ["train.optimizer=sgd", "train.nesterov=true", "train.momentum=0"])
    with pytest.raises(ConfigError, match=r"^config key 'train\.ohem' must be false when train\.loss is given without "
                                          r"an ohem term \(\{'dice': 1\}\), got True$"):
        load_config(None, ["train.ohem=true", "train.loss={dice: 1}"])
    assert load_config(None, ["train.ohem=true", "train.loss={ohem: 1, dice: 1}"]).train.loss == {"ohem": 1, "dice": 1}


@pytest.mark.parametrize("override, key, value", [
    ("train.momentum=0", "momentum", 0),
    ("train.betas=[0, 0.999]", "betas", [0, 0.999]),
    ("train.lr=1", "lr", 1),
    ("train.iters=1e3", "iters", 1000),
    ("train.iters=10.0", "iters", 10),
    ("train.epochs=null", "epochs", None),
    ("train.amp=bf16", "amp", "bf16"),
    ("train.eval_every=null", "eval_every", None),
    ("train.min_lr=0.002", "min_lr", 0.002),
    ("train.device=cpu", "device", "cpu"),
    ("train.lr_steps=['30', 60]", "lr_steps", [30, 60]),
    ("train.loss={ce: 1, lovasz: 0}", "loss", {"ce": 1, "lovasz": 0}),
    ("train.class_weights=median_frequency", "class_weights", "median_frequency"),
    ("train.class_weights=[1, 0]", "class_weights", [1, 0]),
    ("train.focal_gamma=0", "focal_gamma", 0),
])
def test_boundary_values_are_accepted(override, key, value):
    got = getattr(load_config(None, [override]).train, key)
    assert got == value and type(got) is type(value)


def test_integral_floats_become_integers_and_others_are_refused():
    assert load_config(None, ["data.crop_size=[32.0, 48]"]).data.crop_size == [32, 48]
    assert type(load_config(None, ["data.crop_size=[32.0, 48]"]).data.crop_size[0]) is int
    with pytest.raises(ConfigError, match=r"'data\.crop_size' must be .*, got \[32\.5, 48\]$"):
        load_config(None, ["data.crop_size=[32.5, 48]"])


def test_pretrained_file_is_not_read_while_resolving(tmp_path):
    weights = tmp_path / "encoder.pth"
    weights.write_bytes(b"not read before the model is built")
    assert load_config(None, [f"model.kwargs.pretrained_file={weights}"]).model.kwargs["pretrained_file"] == str(weights)


def test_unknown_model_kwargs_are_named():
    with pytest.raises(ConfigError, match=r"^config key 'model\.kwargs\.depth' is not an argument of model 'danet'; "
                                          r"it takes: aux, aux_weight, .*\bencoder, .*\boutput_stride\b"):
        load_config(None, ["model.kwargs.depth=3"])
    with pytest.raises(ConfigError, match=r"^config key 'model\.kwargs' does not suit model 'danet': output_stride "
                                          r"must be 8 or 16, got 4$"):
        load_config(None, ["model.kwargs.output_stride=4"])
    with pytest.raises(ConfigError, match=r"^config key 'model\.kwargs\.pretrained_file' must be null or an existing "
                                          r"file, got 'no/such\.pth'$"):
        load_config(None, ["model.kwargs.pretrained_file=no/such.pth"])
    # arguments the builder passes on to the encoder and the head are accepted
    cfg = load_config(None, ["model.kwargs.aux=true", "model.kwargs.reduction=4",
                             "model.kwargs.encoder_kwargs={ceil_maxpool: true}"])
    assert cfg.model.kwargs["reduction"] == 4


def test_model_kwargs_are_checked_on_the_meta_device(monkeypatch):
    built = []
    original = torch.nn.Conv2d.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self.weight.device.type)

    monkeypatch.setattr(torch.nn.Conv2d, "__init__", record)
    load_config(None, ["model.name=attnet", "model.kwargs={encoder: resnet18, attention: se}"])
    assert built and set(built) == {"meta"}


def test_resolving_a_config_never_imports_its_module_builder(monkeypatch):
    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name, *a: imported.append(name))
    cfg = load_config(None, ["model.name=some_untrusted_module:build", "model.kwargs={anything: 1}"])
    assert cfg.model.name == "some_untrusted_module:build" and imported == []


def test_resolving_a_config_never_reads_a_hub_encoder(monkeypatch):
    import timm

    def refuse(model_id, *args, **kwargs):
        raise AssertionError(f"read the Hub repository {model_id} while resolving a config")

    monkeypatch.setattr(timm.models._factory, "load_model_config_from_hf", refuse)
    cfg = load_config(None, ["model.kwargs.encoder=hf-hub:timm/resnet18.a1_in1k"])
    assert cfg.model.kwargs["encoder"] == "hf-hub:timm/resnet18.a1_in1k"
    with pytest.raises(ConfigError, match="'model.kwargs.no_such_argument' is not an argument"):  # without one, built
        load_config(None, ["model.kwargs.no_such_argument=1"])


@pytest.mark.parametrize("count, device, allowed", [
    (0, "cuda", "auto or cpu (no CUDA device here)"), (0, "cuda:0", "auto or cpu (no CUDA device here)"),
    (1, "cuda", None), (2, "cuda:1", None), (2, "cuda:2", "auto, cpu, cuda or cuda:0..cuda:1"),
])
def test_a_cuda_device_must_be_present(monkeypatch, count, device, allowed):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if allowed is None:
        assert load_config(None, [f"train.device={device}"]).train.device == device
        return
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"train.device={device}"])
    assert str(err.value) == f"config key 'train.device' must be {allowed}, got {device!r}"


def test_broken_yaml_names_file_and_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("train:\n  lr: 0.1\n  iters: [1, 2\nmodel:\n  name: danet\n")
    with pytest.raises(ConfigError, match=r"^config file .*broken\.yaml is not valid YAML: "
                                          r"line 4, column 6: expected ',' or '\]', but got ':'$") as err:
        load_config(recipe)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^override 'train\.betas=\[0\.9': the value is not valid YAML: line 1"):
        load_config(None, ["train.betas=[0.9"])


def test_rules_name_existing_keys():
    keys = set()

    def collect(section, prefix=""):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if dataclasses.is_dataclass(value):
                collect(value, f"{prefix}{f.name}.")
            keys.add(f"{prefix}{f.name}")

    collect(Config())
    assert set(RULES) <= keys, set(RULES) - keys


def test_validate_config_accepts_the_defaults_and_refuses_a_bad_one():
    assert validate_config(Config()) == Config()
    bad = dataclasses.replace(Config(), train=dataclasses.replace(Config().train, batch_size=-8))
    with pytest.raises(ConfigError, match=r"'train\.batch_size' must be an integer > 0, got -8"):
        validate_config(bad)


@pytest.mark.parametrize("override", ["train.lr=0", "train.iters=-5", "train.batch_size=2.5", "model.kwargs.depth=3",
                                      "train.betas=abc", "train.class_weights=[1, 2]"])
def test_cli_train_exits_2_with_one_line_and_no_run_directory(tmp_path, capsys, override):
    root = tmp_path / "runs"
    assert main(["train", "--quiet", "--set", override, "--set", f"run.root={root}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and re.match(r"visattn train: error: config key '[\w.]+' ", lines[0]), captured.err
    assert not root.exists()


def test_cli_eval_with_invalid_override_exits_2(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    assert main(["eval", "--weights", str(weights), "--set", "eval.batch_size=0"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["visattn eval: error: config key 'eval.batch_size' must be an integer > 0, got 0"]


@pytest.mark.parametrize("content, kind", [([torch.ones(2)], "list"), (torch.ones(2), "Tensor")])
def test_cli_eval_with_weights_that_are_no_state_dict_exits_2(tmp_path, capsys, content, kind):
    weights = tmp_path / "odd.pth"
    torch.save(content, weights)
    tiny = ["--set", "model.name=tinyseg:build", "--set", "model.kwargs={}", "--trust-code"]
    assert main(["eval", "--weights", str(weights), *tiny]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"visattn eval: error: checkpoint {weights} holds a {kind}, not a mapping of parameter names to tensors"]


def test_cli_eval_with_mismatched_weights_exits_2(tmp_path, capsys):
    from safetensors.torch import save_file

    weights = tmp_path / "other.safetensors"
    save_file({"stem.weight": torch.zeros(8, 3, 3, 3), "head.weight": torch.zeros(2, 8, 1, 1)}, str(weights))
    argv = ["eval", "--weights", str(weights), "--set", "model.name=tinyseg:build", "--set", "model.kwargs={}",
            "--trust-code"]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"visattn eval: error: cannot load weights {weights} into TinySeg: missing keys (")
    assert "unexpected keys (1): head.weight" in line


def test_a_model_too_large_to_build_is_refused_before_it_is_allocated():
    with pytest.raises(ConfigError, match=r"makes model 'fcn' of 1\.84e\+16 parameters, more than 2e\+09$"):
        load_config(None, ["model.name=fcn", "model.kwargs={channels: 1000000000000}"])
