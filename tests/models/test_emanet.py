"""EMANet: visattn's EMAHead against mmseg's (transcribed), its keys and mmseg's checkpoint names."""
from __future__ import annotations

import pytest
import torch

from helpers import randomize_
from mmseg_heads import assert_head_equals_official, assert_state_dict_round_trip
from mmseg_keys import BN, conv_module_keys, network_keys
from visattn._official import mmseg
from visattn.models.segmentation.emanet import EMAHead, emanet, emanet_r50_d8


def ema_head_keys() -> list[str]:
    """The ``decode_head.*`` names of an mmseg ``emanet_r*-d8`` checkpoint, without the prefix."""
    return [
        "ema_module.bases", *conv_module_keys("ema_in_conv"), "ema_mid_conv.conv.weight", "ema_mid_conv.conv.bias",
        "ema_out_conv.conv.weight", *(f"ema_out_conv.bn.{p}" for p in BN), *conv_module_keys("bottleneck"),
        *conv_module_keys("conv_cat"), "conv_seg.weight", "conv_seg.bias",
    ]


def official_head() -> torch.nn.Module:
    head = mmseg.EMAHead(in_channels=32, channels=16, ema_channels=24, num_bases=6, num_stages=3, num_classes=5,
                         dropout_ratio=0)
    return randomize_(head, seed=2)


def visattn_head() -> EMAHead:
    return EMAHead(32, 5, channels=16, ema_channels=24, num_bases=6, dropout=0.0)


def test_keys_are_mmseg_names_but_the_units():
    keys = sorted(official_head().state_dict())
    assert keys == sorted(ema_head_keys())
    renamed = {"ema_module.bases": "ema.bases"}
    want = sorted(renamed.get(k, k.replace("ema_mid_conv", "ema.ema_mid_conv").replace("ema_out_conv", "ema.ema_out_conv"))
                  for k in keys)
    assert sorted(visattn_head().state_dict()) == want


@pytest.mark.parametrize("training", [False, True])
def test_head_equals_mmseg_head(training, device):
    # in training both move their bases (compared after the step) and the frozen mid conv gets no gradient
    assert_head_equals_official(visattn_head(), official_head(), training, device)



def test_state_dict_round_trip_under_mmseg_names():
    assert_state_dict_round_trip(visattn_head(), official_head())

def test_network_training_and_eval_outputs():
    model = emanet(num_classes=3, encoder="resnet18")
    assert model.loss_weights == {"out": 1.0, "aux": 0.4} and model.align_corners is False
    assert not any(p.requires_grad for p in model.head.ema.ema_mid_conv.parameters())
    x = torch.randn(2, 3, 33, 41)
    bases = model.head.ema.bases.clone()
    outs = model.train()(x)
    assert set(outs) == {"out", "aux"} and all(o.shape == (2, 3, 33, 41) for o in outs.values())
    assert not torch.equal(model.head.ema.bases, bases)


def test_mmseg_checkpoint_keys_convert_to_the_network():
    model = emanet_r50_d8(num_classes=19)
    converted = model.convert_official_state_dict({k: torch.zeros(()) for k in network_keys(ema_head_keys())})
    own = model.state_dict()
    assert sorted(converted) == sorted(own)
    spot = {"decode_head.ema_module.bases": "head.ema.bases",
            "decode_head.ema_mid_conv.conv.bias": "head.ema.ema_mid_conv.conv.bias",
            "decode_head.ema_out_conv.bn.running_var": "head.ema.ema_out_conv.bn.running_var",
            "decode_head.ema_in_conv.conv.weight": "head.ema_in_conv.conv.weight",
            "auxiliary_head.conv_seg.weight": "aux.3.weight"}
    for mmseg_key, key in spot.items():
        assert list(model.convert_official_state_dict({mmseg_key: torch.zeros(())})) == [key]
    model.load_state_dict({k: torch.full_like(own[k], 0.5) for k in converted})
