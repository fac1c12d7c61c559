"""DeepLabV3+: mmseg's checkpoint names convert to the network; the stage-1 decoder; outputs and loss weights."""
from __future__ import annotations

import pytest
import torch
from mmseg_keys import assert_converts, network_keys, official_keys

from visattn._official import mmseg as mm
from visattn.models.segmentation import create_encoder
from visattn.models.segmentation.deeplabv3plus import deeplabv3plus, deeplabv3plus_r101_d8, deeplabv3plus_r50_d8


def sep_aspp_head_keys() -> list[str]:
    return official_keys(lambda: mm.DepthwiseSeparableASPPHead(
        c1_in_channels=256, c1_channels=48, in_channels=2048, channels=512, dilations=(1, 12, 24, 36), in_index=3,
        num_classes=19))


def test_mmseg_checkpoint_keys_convert_to_the_network():
    with torch.device("meta"):
        r50, r101 = deeplabv3plus_r50_d8(), deeplabv3plus_r101_d8()
    spots = {
        "backbone.layer1.0.downsample.0.weight": "encoder.layer1.0.downsample.0.weight",
        "decode_head.aspp_modules.1.depthwise_conv.conv.weight": "head.aspp_modules.1.depthwise_conv.conv.weight",
        "decode_head.sep_bottleneck.1.pointwise_conv.bn.bias": "head.sep_bottleneck.1.pointwise_conv.bn.bias",
        "decode_head.c1_bottleneck.conv.weight": "head.c1_bottleneck.conv.weight",
        "auxiliary_head.convs.0.bn.running_mean": "aux.1.running_mean",
    }
    assert_converts(r50, network_keys(sep_aspp_head_keys()), spots)
    assert_converts(r101, network_keys(sep_aspp_head_keys(), blocks=(3, 4, 23, 3)), spots)


def test_decoder_reads_stage_one_at_stride_four():
    model = deeplabv3plus(num_classes=3, encoder="resnet18", channels=16, c1_channels=6).eval()
    assert model.encoder.feature_info.channels() == [64, 128, 256, 512]
    assert model.encoder.feature_info.reduction() == [4, 8, 8, 8]
    assert model.head.c1_bottleneck.conv.in_channels == 64 and model.aux[0].in_channels == 256
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 64, 96))
        assert model.head(features).shape == (1, 3, 16, 24)
    with pytest.raises(ValueError, match="stages must be 3 or 4, got 5"):
        create_encoder("resnet18", stages=5)


def test_network_training_and_eval_outputs():
    model = deeplabv3plus(num_classes=3, encoder="resnet18", channels=16)
    assert model.loss_weights == {"out": 1.0, "aux": 0.4} and model.align_corners is False
    x = torch.randn(2, 3, 33, 41)
    outs = model.train()(x)
    assert set(outs) == {"out", "aux"} and all(o.shape == (2, 3, 33, 41) for o in outs.values())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 33, 41)
