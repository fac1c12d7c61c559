"""GCNet: visattn's GCHead against mmseg's (transcribed), its keys and mmseg's checkpoint names."""
from __future__ import annotations

import pytest
import torch

from helpers import randomize_
from mmseg_heads import assert_head_equals_official, assert_state_dict_round_trip
from mmseg_keys import conv_module_keys, network_keys
from visattn._official import mmseg
from visattn.models.segmentation.gcnet import GCHead, gcnet, gcnet_r50_d8


def gc_head_keys() -> list[str]:
    """The ``decode_head.*`` names of an mmseg ``gcnet_r*-d8`` checkpoint, without the prefix."""
    transform = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    return [
        *conv_module_keys("convs.0"), *conv_module_keys("convs.1"), "gc_block.conv_mask.weight",
        "gc_block.conv_mask.bias", *(f"gc_block.channel_add_conv.{k}" for k in transform),
        *conv_module_keys("conv_cat"), "conv_seg.weight", "conv_seg.bias",
    ]


def official_head(**kwargs) -> torch.nn.Module:
    return randomize_(mmseg.GCHead(in_channels=32, channels=16, num_classes=5, dropout_ratio=0, **kwargs), seed=2)


def test_keys_are_mmseg_names():
    assert sorted(GCHead(32, 5, channels=16).state_dict()) == sorted(gc_head_keys())
    assert sorted(official_head().state_dict()) == sorted(gc_head_keys())


@pytest.mark.parametrize("training", [False, True])
def test_head_equals_mmseg_head(training, device):
    assert_head_equals_official(GCHead(32, 5, channels=16, dropout=0.0), official_head(), training, device)


def test_head_with_both_fusions_equals_mmseg_head(device):
    kwargs = dict(pooling_type="avg", fusion_types=("channel_add", "channel_mul"))
    assert_head_equals_official(GCHead(32, 5, channels=16, dropout=0.0, **kwargs), official_head(**kwargs), True, device)



def test_state_dict_round_trip_under_mmseg_names():
    assert_state_dict_round_trip(GCHead(32, 5, channels=16, dropout=0.0), official_head())

def test_network_training_and_eval_outputs():
    model = gcnet(num_classes=3, encoder="resnet18")
    assert model.loss_weights == {"out": 1.0, "aux": 0.4} and model.align_corners is False
    assert model.aux[0].out_channels == 256
    x = torch.randn(2, 3, 33, 41)
    outs = model.train()(x)
    assert set(outs) == {"out", "aux"} and all(o.shape == (2, 3, 33, 41) for o in outs.values())


def test_mmseg_checkpoint_keys_convert_to_the_network():
    model = gcnet_r50_d8(num_classes=19)
    converted = model.convert_official_state_dict({k: torch.zeros(()) for k in network_keys(gc_head_keys())})
    own = model.state_dict()
    assert sorted(converted) == sorted(own)
    spot = {"decode_head.gc_block.channel_add_conv.1.weight": "head.gc_block.channel_add_conv.1.weight",
            "auxiliary_head.conv_seg.bias": "aux.3.bias", "backbone.stem.7.weight": "encoder.bn1.weight"}
    for mmseg_key, key in spot.items():
        assert list(model.convert_official_state_dict({mmseg_key: torch.zeros(())})) == [key]
    model.load_state_dict({k: torch.full_like(own[k], 0.5) for k in converted})
