"""Segmentors: loss weights, attention heads, the authors' backbones, official checkpoints, export, errors.

The output contract every registered model keeps (shapes, batch independence, training outputs,
state-dict round trip) is tested over the registry in ``test_models.py``.

The official-checkpoint tests build the authors' networks (:mod:`visattn._official`: junfu1115/DANet,
speedinghzl/CCNet, maggiesong7/FullyAttentional) at small widths, with random weights, and check
that ``visattn.load_official`` reproduces their logits exactly.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import CHANNELS, randomize_, rel_err
from torch import nn

import visattn
from visattn._official import ccnet, danet, flanet
from visattn.models import create_model, list_models

# resnet18 at a quarter of its widths: stages 2, 3, 4 have 32, 64, 128 channels
SMALL = {"encoder": "resnet18", "encoder_kwargs": {"channels": (16, 32, 64, 128)}}
K = 5


def _eval(model: nn.Module) -> nn.Module:
    return randomize_(model).eval()


# ---------------------------------------------------------------- heads and variants


@pytest.mark.parametrize(
    "name, kwargs, loss_weights",
    [
        ("fcn", {}, {"out": 1.0}),
        ("fcn", {"aux": True, "aux_weight": 0.2}, {"out": 1.0, "aux": 0.2}),
        ("danet", {}, {"out": 1.0, "pam": 1.0, "cam": 1.0}),
        ("ccnet", {}, {"out": 1.0, "aux": 0.4}),
        ("flanet", {}, {"out": 1.0, "aux2": 1.0, "aux3": 1.0}),
        ("attnet", {"attention": "cbam"}, {"out": 1.0}),
    ],
)
def test_official_loss_weights_name_the_training_outputs_in_order(name, kwargs, loss_weights):
    model = create_model(name, num_classes=K, **SMALL, **kwargs).train()
    assert model.loss_weights == loss_weights
    assert list(model(torch.randn(2, 3, 33, 41))) == list(loss_weights)


@pytest.mark.parametrize("attention", visattn.list_attentions())
def test_attention_head_accepts_every_attention(attention):
    kwargs = {"channels": CHANNELS}
    model = _eval(create_model("attnet", num_classes=K, attention=attention, **SMALL, **kwargs))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 35, 51))
    assert out.shape == (1, K, 35, 51) and torch.isfinite(out).all()


def test_recurrence_is_configurable_and_defaults_to_two():
    assert create_model("ccnet", **SMALL).head.rcca.recurrence == 2
    assert create_model("ccnet", recurrence=1, **SMALL).head.rcca.recurrence == 1


def test_named_variants_use_the_official_backbones():
    names = list_models()
    for arch in ("fcn", "danet", "ccnet", "flanet"):
        assert {f"{arch}_r50_d8", f"{arch}_r101_d8", arch} <= set(names)
    with torch.device("meta"):
        ccnet = create_model("ccnet_r101_d8")
        danet = create_model("danet_r101_d8")
    enc = ccnet.encoder
    assert enc.conv1[6].out_channels == 128 and enc.maxpool.ceil_mode
    assert enc.layer3[0].conv2.dilation == (2, 2) and enc.layer4[0].conv2.dilation == (4, 4)
    assert len(enc.layer3) == 23
    assert [b.conv2.dilation[0] for b in danet.encoder.layer4] == [4, 8, 16]
    assert danet.encoder.conv1.kernel_size == (7, 7) and danet.encoder.layer3[0].conv2.dilation == (1, 1)


# ---------------------------------------------------------------- errors


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown encoder 'resnet5'"):
        create_model("fcn", encoder="resnet5")
    with pytest.raises(ValueError, match="output_stride"):
        create_model("fcn", encoder="resnet18", output_stride=32)
    with pytest.raises(ValueError, match="does not support output_stride"):
        create_model("fcn", encoder="vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="num_classes"):
        create_model("danet", num_classes=0, **SMALL)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("danet_r102_d8")
    with pytest.raises(ValueError, match="ResNet-style"):
        create_model("ccnet_r50_d8", encoder="convnext_atto")
    with pytest.raises(ValueError, match="unknown attention"):
        create_model("attnet", attention="nope", **SMALL)
    model = create_model("danet", num_classes=3, **SMALL)
    other = create_model("danet", num_classes=4, **SMALL).state_dict()
    state = {k.replace("encoder.", "pretrained.", 1): v for k, v in other.items()}
    with pytest.raises(ValueError, match="shape mismatches"):
        visattn.load_official(model, state)


# ---------------------------------------------------------------- official layouts (visattn._official)

# resnet26 at a quarter of the published widths: stages 2, 3, 4 have 128, 256, 512 channels
LAYERS, WIDTH_DIVISOR = (2, 2, 2, 2), 4
TIMM_SMALL = {"channels": (16, 32, 64, 128), "stem_width": 16}


def _logits(outputs, size):
    """The main logits at ``size``: CCNet returns them at stride 8, DANet and FLANet upsampled."""
    return F.interpolate(outputs[0], size, mode="bilinear", align_corners=True)


OFFICIAL = {
    "danet": (lambda: danet.DANet(K, LAYERS, WIDTH_DIVISOR), {"multi_grid": (4, 8, 16)}),
    "ccnet": (lambda: ccnet.ResNet(K, 2, LAYERS, WIDTH_DIVISOR),
              {"stem_type": "deep", "full_first_dilation": True, "ceil_maxpool": True}),
    "flanet": (lambda: flanet.FLANet(LAYERS, K, width_divisor=WIDTH_DIVISOR),
               {"stem_type": "deep", "full_first_dilation": True}),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_checkpoint_gives_official_logits(name):
    build_official, encoder_kwargs = OFFICIAL[name]
    official = randomize_(build_official(), seed=1).eval()
    model = create_model(name, num_classes=K, encoder="resnet26", encoder_kwargs={**TIMM_SMALL, **encoder_kwargs})
    visattn.load_official(model, official.state_dict())
    x = torch.randn(1, 3, 65, 47)  # odd size: exercises CCNet's ceil-mode pool
    with torch.no_grad():
        expected = _logits(official(x), x.shape[-2:])
        got = model.eval()(x)
    assert got.shape == expected.shape == (1, K, 65, 47)
    assert rel_err(got, expected) < 1e-4


def test_ccnet_import_applies_inplace_abn_scale():
    official = randomize_(OFFICIAL["ccnet"][0](), seed=2)
    with torch.no_grad():
        official.head.conva[1].weight.neg_()
    model = create_model("ccnet", num_classes=K, encoder="resnet26", encoder_kwargs={**TIMM_SMALL, **OFFICIAL["ccnet"][1]})
    visattn.load_official(model, official.state_dict())
    expected = official.head.conva[1].weight.abs() + 1e-5
    assert torch.equal(model.head.conva[1].weight, expected)
    assert model.aux[0].bias is not None and model.aux[0].out_channels == 128


# ---------------------------------------------------------------- export


def test_torch_export_and_onnx_match_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _eval(create_model("danet", num_classes=K, **SMALL))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.export(model, (x,))
        assert rel_err(exported.module()(x), expected) < 1e-5
    path = tmp_path / "danet.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert rel_err(torch.from_numpy(got), expected) < 1e-4
