"""DeepLabV3+: the stage-1 decoder (the recipe and its checkpoint names: test_mmseg_networks)."""
from __future__ import annotations

import pytest
import torch

from visattn.models.segmentation import create_encoder
from visattn.models.segmentation.deeplabv3plus import deeplabv3plus


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
