"""OCRNet: mmseg's cascade checkpoint names convert to the network; the regions output and its loss weight."""
from __future__ import annotations

import torch
from mmseg_keys import assert_converts, resnet_v1c_keys

from visattn._official import mmseg as mm
from visattn.viz import capture_inputs, find_attention_modules
from visattn.models.segmentation.ocrnet import ocrnet, ocrnet_r101_d8, ocrnet_r50_d8


def cascade_keys() -> list[str]:
    """``decode_head.*`` names of an ``ocrnet_r*-d8`` checkpoint: ``0`` the FCNHead, ``1`` the OCRHead."""
    with torch.device("meta"):
        fcn = mm.FCNHead(in_channels=1024, channels=256, num_convs=1, concat_input=False, in_index=2, num_classes=19)
        ocr = mm.OCRHead(in_channels=2048, channels=512, ocr_channels=256, in_index=3, num_classes=19)
    return [f"decode_head.0.{k}" for k in fcn.state_dict()] + [f"decode_head.1.{k}" for k in ocr.state_dict()]


def test_mmseg_checkpoint_keys_convert_to_the_network():
    with torch.device("meta"):
        r50, r101 = ocrnet_r50_d8(), ocrnet_r101_d8()
    spots = {
        "decode_head.0.convs.0.conv.weight": "head.regions.0.weight",
        "decode_head.0.convs.0.bn.running_var": "head.regions.1.running_var",
        "decode_head.0.conv_seg.bias": "head.regions.3.bias",
        "decode_head.1.object_context_block.query_project.1.bn.weight":
            "head.object_context_block.query_project.1.bn.weight",
        "decode_head.1.conv_seg.weight": "head.conv_seg.weight",
        "backbone.stem.0.weight": "encoder.conv1.0.weight",
    }
    assert_converts(r50, [f"backbone.{k}" for k in resnet_v1c_keys()] + cascade_keys(), spots)
    assert_converts(r101, [f"backbone.{k}" for k in resnet_v1c_keys((3, 4, 23, 3))] + cascade_keys(), spots)


def test_network_training_outputs_the_regions():
    model = ocrnet(num_classes=3, encoder="resnet18", channels=16, ocr_channels=8)
    assert model.aux is None and model.align_corners is False
    assert model.loss_weights == {"out": 1.0, "regions": 0.4}
    assert model.head.regions[0].in_channels == 256 and model.head.regions[0].out_channels == 256
    x = torch.randn(2, 3, 33, 41)
    outs = model.train()(x)
    assert list(outs) == ["out", "regions"] and all(o.shape == (2, 3, 33, 41) for o in outs.values())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 33, 41)


def test_object_regions_are_the_pictures():
    model = ocrnet(num_classes=3, encoder="resnet18", channels=16, ocr_channels=8).eval()
    assert list(find_attention_modules(model)) == ["head.object_regions"]
    with torch.no_grad():
        _, inputs = capture_inputs(model, torch.randn(1, 3, 48, 64), find_attention_modules(model))
    logits = inputs["head.object_regions"]
    assert logits.shape == (1, 3, 6, 8)
    maps = model.head.object_regions.attention_maps(logits, [(1, 2), (5, 7)])
    for amap, (r, c) in zip(maps, [(1, 2), (5, 7)]):
        k = int(logits[0, :, r, c].argmax())
        want = torch.softmax(logits[0, k].flatten(), 0).view(6, 8)
        assert amap.point == (r, c) and f"class {k}" in amap.title
        torch.testing.assert_close(torch.from_numpy(amap.values), want)
