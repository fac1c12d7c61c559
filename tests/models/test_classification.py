"""Classifiers: EPSANet-50/101, BAM-ResNet-50/101, SGE/SE/CBAM-ResNet-50.

Independent formulations: the authors' model code (:mod:`visattn._official`: murufeng/EPSANet,
Jongchan/attention-module, implus/PytorchInsight) and timm's ``seresnet50``. Their state dicts, with random
values, must load strictly through ``visattn.load_official`` and give the same logits.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import visattn
from helpers import randomize_, rel_err
from visattn._official import attention_module, epsanet, pytorchinsight
from visattn.models import create_model
from visattn.models.epsanet import EPSANet
from visattn.models.resnet import ResNet
from visattn.weights import save_state_dict

PARAMS = {
    "epsanet50": 22_561_715,
    "epsanet101": 38_900_279,
    "bam_resnet50": 25_915_099,
    "bam_resnet101": 44_907_227,
    "sge_resnet50": 25_559_080,  # ResNet-50 25,557,032 + 16 blocks x 2 x 64
    "se_resnet50": 28_088_024,  # the SE paper's figure
    "cbam_resnet50": 28_089_624,  # SE-ResNet-50 + 16 x (7*7*2 conv + BN(1))
}


# ---------------------------------------------------------------- official code (visattn._official)
OFFICIAL: dict[str, Callable[[], nn.Module]] = {
    "epsanet50": epsanet.epsanet50,
    "epsanet101": epsanet.epsanet101,
    "bam_resnet50": lambda: attention_module.ResidualNet("ImageNet", 50, 1000, "BAM"),
    "bam_resnet101": lambda: attention_module.ResidualNet("ImageNet", 101, 1000, "BAM"),
    "sge_resnet50": pytorchinsight.sge_resnet50,
    "cbam_resnet50": lambda: attention_module.ResidualNet("ImageNet", 50, 1000, "CBAM"),
}


def official(name: str) -> nn.Module:
    """The authors' model for a registered name (timm's seresnet50 for SE)."""
    if name == "se_resnet50":
        import timm

        return timm.create_model("seresnet50", pretrained=False)
    return OFFICIAL[name]()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models():
    """Each 50-layer classifier built once (1000 classes, random weights, eval)."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = randomize_(create_model(name), seed=len(cache)).eval()
        return cache[name]

    return get


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("name", OFFICIAL)
def test_parameter_count_equals_official_code(name):
    with torch.device("meta"):
        assert n_params(official(name)) == PARAMS[name]


@pytest.mark.parametrize("name", ["epsanet50", "bam_resnet50", "sge_resnet50", "cbam_resnet50", "se_resnet50"])
def test_official_state_dict_gives_official_logits(name, models):
    ref = randomize_(official(name), seed=123).eval()
    ours = visattn.load_official(models(name), ref.state_dict())
    # Jongchan's nets end in AvgPool2d(7): the official code only runs at 224x224
    size = 224 if name in ("bam_resnet50", "cbam_resnet50") else 64
    x = torch.randn(1 if size == 224 else 2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert torch.isfinite(expected).all() and expected.abs().max() > 1e-3
    assert rel_err(got, expected) < 1e-5


def test_released_bam_weights_need_product():
    """The paper's ``combine="sum"`` is another function: the released BAM weights are refused."""
    with torch.device("meta"):
        state = official("bam_resnet50").state_dict()
        paper = create_model("bam_resnet50", combine="sum")
    with pytest.raises(ValueError, match="combine='product'"):
        visattn.load_official(paper, state)


def test_wrong_num_classes_on_import_is_a_clear_error():
    with torch.device("meta"):  # shapes are checked before any copy
        state = official("epsanet50").state_dict()
        model = create_model("epsanet50", num_classes=10)
    mismatch = r"shape mismatches .*fc\.weight: checkpoint \(1000, 2048\) vs model \(10, 2048\)"
    with pytest.raises(ValueError, match=mismatch):
        visattn.load_official(model, state)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="epsanet50"):
        create_model("epsanet_50")
    with pytest.raises(ValueError, match="bam_resnet50"):
        create_model("bam_resnet5")


@pytest.mark.parametrize("name", ["epsanet50", "sge_resnet50", "se_resnet50", "bam_resnet101"])
def test_pretrained_without_download_link_says_how_to_load(name):
    with torch.device("meta"), pytest.raises(ValueError, match=r"visattn\.load_official"):
        create_model(name, pretrained=True)


def test_pretrained_path_loads_a_local_checkpoint(tmp_path, models):
    src = models("sge_resnet50")
    path = save_state_dict(src.state_dict(), tmp_path / "sge.safetensors")
    model = create_model("sge_resnet50", pretrained=path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)


def test_official_key_names():
    with torch.device("meta"):
        keys = set(create_model("bam_resnet50").state_dict()) | set(create_model("epsanet50").state_dict())
    for key in ("bam1.channel_att.gate_c.gate_c_fc_0.weight", "bam3.spatial_att.gate_s.gate_s_conv_final.bias",
                "layer1.0.conv2.conv_4.weight", "layer4.2.conv2.se.fc2.bias", "layer2.0.downsample.1.running_var"):
        assert key in keys


def test_train_mode_backward_reaches_attention():
    torch.manual_seed(0)
    model = ResNet((1, 1, 1, 1), num_classes=10, block_kwargs={"attn": "sge", "attn_kwargs": {"groups": 8}},
                   stage_attn="bam").train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    assert model.layer1[0].sge.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.bam2.parameters())


def test_export_and_onnx_match_eager(tmp_path):
    """A reduced-depth EPSANet (one block per stage): the PSA block is the classifiers' most
    intricate graph; the attention gates are exported by the attention modules' own tests."""
    ort = pytest.importorskip("onnxruntime")
    model = randomize_(EPSANet((1, 1, 1, 1), num_classes=10), seed=3).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.export(model, (x,))
        assert rel_err(exported.module()(x), expected) < 1e-5
    path = tmp_path / "epsanet.onnx"
    torch.onnx.export(exported, (x,), str(path), dynamo=True, optimize=False)  # reuses the export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert rel_err(torch.from_numpy(got), expected) < 1e-4
