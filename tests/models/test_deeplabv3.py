"""DeepLabV3: mmseg's checkpoint names convert to the network; the network's outputs and loss weights."""
from __future__ import annotations

import pytest
import torch
from mmseg_keys import assert_converts, network_keys, official_keys

from visattn._official import mmseg as mm
from visattn.models.segmentation.deeplabv3 import ASPPHead, deeplabv3, deeplabv3_r101_d8, deeplabv3_r50_d8


def aspp_head_keys() -> list[str]:
    return official_keys(lambda: mm.ASPPHead(in_channels=2048, channels=512, dilations=(1, 12, 24, 36), in_index=3,
                                             num_classes=19))


def test_mmseg_checkpoint_keys_convert_to_the_network():
    with torch.device("meta"):
        r50, r101 = deeplabv3_r50_d8(), deeplabv3_r101_d8()
    spots = {
        "backbone.layer4.2.bn3.bias": "encoder.layer4.2.bn3.bias",
        "decode_head.image_pool.1.conv.weight": "head.image_pool.1.conv.weight",
        "decode_head.aspp_modules.3.bn.weight": "head.aspp_modules.3.bn.weight",
        "auxiliary_head.conv_seg.bias": "aux.3.bias",
    }
    assert_converts(r50, network_keys(aspp_head_keys()), spots)
    assert_converts(r101, network_keys(aspp_head_keys(), blocks=(3, 4, 23, 3)), spots)


def test_branches_follow_the_dilations():
    head = ASPPHead(32, 5, channels=8, dilations=(1, 12, 24, 36))
    convs = [branch.conv for branch in head.aspp_modules]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (3, 3), (3, 3)]
    assert [c.dilation[0] for c in convs] == [1, 12, 24, 36] and [c.padding[0] for c in convs] == [0, 12, 24, 36]
    with pytest.raises(ValueError, match="dilations"):
        ASPPHead(32, 5, dilations=(1, 0))


def test_network_training_and_eval_outputs():
    model = deeplabv3(num_classes=3, encoder="resnet18", channels=16)
    assert model.loss_weights == {"out": 1.0, "aux": 0.4} and model.align_corners is False
    x = torch.randn(2, 3, 33, 41)
    outs = model.train()(x)
    assert set(outs) == {"out", "aux"} and all(o.shape == (2, 3, 33, 41) for o in outs.values())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 33, 41)
