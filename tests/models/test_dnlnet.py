"""DNLNet: visattn's DNLHead against mmseg's (transcribed), its keys and mmseg's checkpoint names."""
from __future__ import annotations

import pytest
import torch

from helpers import randomize_
from mmseg_heads import assert_head_equals_official, assert_state_dict_round_trip
from mmseg_keys import BN, conv_module_keys, network_keys
from visattn._official import mmseg
from visattn.models.segmentation.dnlnet import DNLHead, dnlnet, dnlnet_r50_d8


def dnl_head_keys() -> list[str]:
    """The ``decode_head.*`` names of an mmseg ``dnl_r*-d8`` checkpoint, without the prefix."""
    block = [f"dnl_block.{b}.conv.{p}" for b in ("g", "theta", "phi") for p in ("weight", "bias")]
    return [
        *conv_module_keys("convs.0"), *conv_module_keys("convs.1"), *block, "dnl_block.conv_out.conv.weight",
        *(f"dnl_block.conv_out.bn.{p}" for p in BN), "dnl_block.conv_mask.weight", "dnl_block.conv_mask.bias",
        *conv_module_keys("conv_cat"), "conv_seg.weight", "conv_seg.bias",
    ]


def official_head() -> torch.nn.Module:
    return randomize_(mmseg.DNLHead(in_channels=32, channels=16, num_classes=5, dropout_ratio=0), seed=2)


def test_keys_are_mmseg_names():
    assert sorted(DNLHead(32, 5, channels=16).state_dict()) == sorted(dnl_head_keys())
    assert sorted(official_head().state_dict()) == sorted(dnl_head_keys())


@pytest.mark.parametrize("training", [False, True])
def test_head_equals_mmseg_head(training, device):
    # mmseg divides the scores by float32 tensors (sqrt(C') and the temperature: 1e-8 off in float64)
    head = DNLHead(32, 5, channels=16, dropout=0.0)
    assert_head_equals_official(head, official_head(), training, device, rtol=1e-7)



def test_state_dict_round_trip_under_mmseg_names():
    assert_state_dict_round_trip(DNLHead(32, 5, channels=16, dropout=0.0), official_head())

def test_network_training_and_eval_outputs():
    model = dnlnet(num_classes=3, encoder="resnet18")
    assert model.loss_weights == {"out": 1.0, "aux": 0.4} and model.align_corners is False
    assert model.head.dnl_block.temperature == 0.05 and model.head.dnl_block.use_scale
    x = torch.randn(2, 3, 33, 41)
    outs = model.train()(x)
    assert set(outs) == {"out", "aux"} and all(o.shape == (2, 3, 33, 41) for o in outs.values())


def test_mmseg_checkpoint_keys_convert_to_the_network():
    model = dnlnet_r50_d8(num_classes=19)
    converted = model.convert_official_state_dict({k: torch.zeros(()) for k in network_keys(dnl_head_keys())})
    own = model.state_dict()
    assert sorted(converted) == sorted(own)
    spot = {"decode_head.dnl_block.conv_mask.weight": "head.dnl_block.conv_mask.weight",
            "auxiliary_head.convs.0.bn.running_mean": "aux.1.running_mean",
            "backbone.layer4.2.conv3.weight": "encoder.layer4.2.conv3.weight"}
    for mmseg_key, key in spot.items():
        assert list(model.convert_official_state_dict({mmseg_key: torch.zeros(())})) == [key]
    model.load_state_dict({k: torch.full_like(own[k], 0.5) for k in converted})
