"""Every registered model, through the registry: parameter count, eval output, training outputs,
state-dict round trip. A model is tested here as soon as it registers.

Segmentors run on a reduced ResNet-18 encoder (``SMALL_ENCODER``) and classifiers at full depth,
both with ``K`` classes and random weights; parameter counts are of the builders' defaults,
built on the ``meta`` device (shapes only, no memory).
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from helpers import randomize_, rel_err
from torch import nn

from visattn.models import create_model, list_models
from visattn.models.segmentation import Segmentor
from visattn.weights import read_state_dict, save_state_dict

# resnet18 at a quarter of its widths: stages 2, 3, 4 have 32, 64, 128 channels
SMALL_ENCODER = {"encoder": "resnet18", "encoder_kwargs": {"channels": (16, 32, 64, 128)}}
K = 5
ODD_SIZE = (37, 45)

# at each builder's defaults (1000 classes for classifiers, 19 for segmentors), as in docs/models.md
PARAMS = {
    "attnet": 33_284_308,
    "bam_resnet101": 44_907_227,
    "bam_resnet50": 25_915_099,
    "cbam_resnet50": 28_089_624,
    "ccnet": 52_172_007,
    "ccnet_r101_d8": 71_287_911,
    "ccnet_r50_d8": 52_295_783,
    "danet": 47_462_651,
    "danet_r101_d8": 66_454_779,
    "danet_r50_d8": 47_462_651,
    "epsanet101": 38_900_279,
    "epsanet50": 22_561_715,
    "fcn": 32_955_987,
    "fcn_r101_d8": 51_948_115,
    "fcn_r50_d8": 32_955_987,
    "nlnet": 50_023_814,
    "nlnet_r101_d8": 69_015_942,
    "nlnet_r50_d8": 50_023_814,
    "flanet": 50_886_906,
    "flanet_r101_d8": 70_002_810,
    "flanet_r50_d8": 51_010_682,
    "pspnet": 48_975_494,
    "pspnet_r50_d8": 48_975_494,
    "pspnet_r101_d8": 67_967_622,
    "deeplabv3": 68_113_030,
    "deeplabv3_r50_d8": 68_113_030,
    "deeplabv3_r101_d8": 87_105_158,
    "deeplabv3plus": 43_589_878,
    "deeplabv3plus_r50_d8": 43_589_878,
    "deeplabv3plus_r101_d8": 62_582_006,
    "ann": 46_228_614,
    "ann_r50_d8": 46_228_614,
    "ann_r101_d8": 65_220_742,
    "ocrnet": 36_524_166,
    "ocrnet_r50_d8": 36_524_166,
    "ocrnet_r101_d8": 55_516_294,
    "dnlnet": 50_024_327,
    "dnlnet_r101_d8": 69_016_455,
    "dnlnet_r50_d8": 50_024_327,
    "emanet": 42_349_958,
    "emanet_r101_d8": 61_342_086,
    "emanet_r50_d8": 42_349_958,
    "gcnet": 49_630_215,
    "gcnet_r101_d8": 68_622_343,
    "gcnet_r50_d8": 49_630_215,
    "isanet": 37_707_398,
    "isanet_r101_d8": 56_699_526,
    "isanet_r50_d8": 37_707_398,
    "se_resnet50": 28_088_024,
    "sge_resnet50": 25_559_080,
}
MODELS = list_models()

pytestmark = pytest.mark.usefixtures("one_thread")  # inputs are tiny


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def full_size(name: str) -> nn.Module:
    """``name`` at its defaults on the meta device."""
    with torch.device("meta"):
        return create_model(name)


def is_segmentor(name: str) -> bool:
    return isinstance(full_size(name), Segmentor)


def build(name: str) -> nn.Module:
    """``name`` at test size (``K`` classes; segmentors on ``SMALL_ENCODER``), default initialisation."""
    return create_model(name, num_classes=K, **(SMALL_ENCODER if is_segmentor(name) else {}))


@pytest.fixture(scope="module")
def built():
    """Each model built once at test size with random weights (gammas non-zero); tests use copies."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = randomize_(build(name), seed=MODELS.index(name)).eval()
        return copy.deepcopy(cache[name])

    return get


def test_no_registered_name_is_lost():
    assert sorted(set(PARAMS) - set(MODELS)) == []


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_at_defaults(name):
    assert name in PARAMS, f"record the parameter count of {name!r} at its defaults in PARAMS"
    assert n_params(full_size(name)) == PARAMS[name]


@pytest.mark.parametrize("name", MODELS)
def test_eval_output_at_odd_input_size(name, built, device):
    model = built(name).to(device)
    x = torch.randn(2, 3, *ODD_SIZE, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 on every device
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(2)])
    assert isinstance(batched, torch.Tensor)
    assert batched.shape == ((2, K, *ODD_SIZE) if is_segmentor(name) else (2, K))
    assert torch.isfinite(batched).all() and batched.std() > 0
    assert rel_err(batched, single) < 1e-5  # batch items do not mix


@pytest.mark.parametrize("name", MODELS)
def test_train_outputs_match_loss_weights_and_reach_every_parameter(name, built, device):
    model = built(name).to(device).train()
    outs = model(torch.randn(2, 3, *ODD_SIZE, generator=torch.Generator().manual_seed(1)).to(device))
    if is_segmentor(name):
        assert isinstance(outs, dict) and set(outs) == set(model.loss_weights)
        assert next(iter(outs)) == "out"
        assert all(v.shape == (2, K, *ODD_SIZE) for v in outs.values())
        loss = sum(model.loss_weights[k] * v.square().mean() for k, v in outs.items())
    else:
        assert isinstance(outs, torch.Tensor) and outs.shape == (2, K)
        loss = outs.square().mean()
    loss.backward()
    assert [n for n, p in model.named_parameters() if (p.grad is None) == p.requires_grad] == []  # frozen: none


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name, built, tmp_path):
    src = built(name)
    path = save_state_dict(src.state_dict(), tmp_path / f"{name}.safetensors")
    dst = build(name).eval()
    dst.load_state_dict(read_state_dict(path), strict=True)
    x = torch.randn(1, 3, *ODD_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
