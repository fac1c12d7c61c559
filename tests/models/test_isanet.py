"""ISANet: visattn's ISAHead against mmseg's (transcribed), its keys and mmseg's checkpoint names."""
from __future__ import annotations

import pytest
import torch

from helpers import randomize_
from mmseg_heads import assert_head_equals_official, assert_state_dict_round_trip
from mmseg_keys import conv_module_keys, network_keys
from visattn._official import mmseg
from visattn.models.segmentation.isanet import ISAHead, isanet, isanet_r50_d8


def relation_keys(prefix: str) -> list[str]:
    projects = [*conv_module_keys(f"{prefix}.key_project.0"), *conv_module_keys(f"{prefix}.key_project.1"),
                *conv_module_keys(f"{prefix}.query_project.0"), *conv_module_keys(f"{prefix}.query_project.1")]
    return [*projects, f"{prefix}.value_project.weight", f"{prefix}.value_project.bias",
            *conv_module_keys(f"{prefix}.output_project")]


def isa_head_keys() -> list[str]:
    """The ``decode_head.*`` names of an mmseg ``isanet_r*-d8`` checkpoint, without the prefix."""
    return [*conv_module_keys("in_conv"), *relation_keys("global_relation"), *relation_keys("local_relation"),
            *conv_module_keys("out_conv"), "conv_seg.weight", "conv_seg.bias"]


def official_head() -> torch.nn.Module:
    # 9 x 11 features in 4 x 3 groups: padded to 12 x 12 (rows 1 + 2, columns 0 + 1)
    head = mmseg.ISAHead(in_channels=32, channels=16, isa_channels=8, down_factor=(4, 3), num_classes=5,
                         dropout_ratio=0)
    return randomize_(head, seed=2)


def visattn_head() -> ISAHead:
    return ISAHead(32, 5, channels=16, isa_channels=8, down_factor=(4, 3), dropout=0.0)


def test_keys_are_mmseg_names_under_isa():
    assert sorted(official_head().state_dict()) == sorted(isa_head_keys())
    moved = ("global_relation", "local_relation", "out_conv")
    want = sorted(f"isa.{k}" if k.startswith(moved) else k for k in isa_head_keys())
    assert sorted(visattn_head().state_dict()) == want


@pytest.mark.parametrize("training", [False, True])
def test_head_equals_mmseg_head(training, device):
    assert_head_equals_official(visattn_head(), official_head(), training, device)



def test_state_dict_round_trip_under_mmseg_names():
    assert_state_dict_round_trip(visattn_head(), official_head())

def test_network_training_and_eval_outputs():
    model = isanet(num_classes=3, encoder="resnet18")
    assert model.loss_weights == {"out": 1.0, "aux": 0.4} and model.align_corners is False
    assert model.head.isa.down_factor == (8, 8) and model.head.isa.isa_channels == 256
    x = torch.randn(2, 3, 33, 41)
    outs = model.train()(x)
    assert set(outs) == {"out", "aux"} and all(o.shape == (2, 3, 33, 41) for o in outs.values())


def test_mmseg_checkpoint_keys_convert_to_the_network():
    model = isanet_r50_d8(num_classes=19)
    converted = model.convert_official_state_dict({k: torch.zeros(()) for k in network_keys(isa_head_keys())})
    own = model.state_dict()
    assert sorted(converted) == sorted(own)
    spot = {"decode_head.global_relation.key_project.1.bn.weight": "head.isa.global_relation.key_project.1.bn.weight",
            "decode_head.local_relation.value_project.bias": "head.isa.local_relation.value_project.bias",
            "decode_head.out_conv.conv.weight": "head.isa.out_conv.conv.weight",
            "decode_head.in_conv.bn.bias": "head.in_conv.bn.bias"}
    for mmseg_key, key in spot.items():
        assert list(model.convert_official_state_dict({mmseg_key: torch.zeros(())})) == [key]
    model.load_state_dict({k: torch.full_like(own[k], 0.5) for k in converted})
