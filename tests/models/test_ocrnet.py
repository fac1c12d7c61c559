"""OCRNet: the regions head and its pictures (the recipe and its cascade's checkpoint names: test_mmseg_networks)."""
from __future__ import annotations

import torch

from visattn.viz import capture_inputs, find_attention_modules
from visattn.models.segmentation.ocrnet import OCRHead, ocrnet


def test_regions_head_is_256_wide_on_stage_3():
    regions = OCRHead(64, 48, 3, channels=16, ocr_channels=8).regions
    assert (regions[0].in_channels, regions[0].out_channels, regions.in_index) == (48, 256, -2)


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
