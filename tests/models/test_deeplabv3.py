"""DeepLabV3: the ASPP branches (the recipe and its checkpoint names: test_mmseg_networks)."""
from __future__ import annotations

import pytest

from visattn.models.segmentation.deeplabv3 import ASPPHead


def test_branches_follow_the_dilations():
    head = ASPPHead(32, 5, channels=8, dilations=(1, 12, 24, 36))
    convs = [branch.conv for branch in head.aspp_modules]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (3, 3), (3, 3)]
    assert [c.dilation[0] for c in convs] == [1, 12, 24, 36] and [c.padding[0] for c in convs] == [0, 12, 24, 36]
    with pytest.raises(ValueError, match="dilations"):
        ASPPHead(32, 5, dilations=(1, 0))
