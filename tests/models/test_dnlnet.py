"""DNLNet: DNLHead's keys and the recipe's block (the recipe and the head against mmseg's: test_mmseg_networks)."""
from __future__ import annotations

from mmseg_heads import official_dnl_head
from mmseg_keys import dnl_head_keys
from visattn.models.segmentation.dnlnet import DNLHead


def test_keys_are_mmseg_names():
    assert sorted(DNLHead(32, 5, channels=16).state_dict()) == sorted(dnl_head_keys())
    assert sorted(official_dnl_head().state_dict()) == sorted(dnl_head_keys())


def test_block_is_scaled_at_temperature_0_05():
    block = DNLHead(32, 5, channels=16).dnl_block
    assert block.temperature == 0.05 and block.use_scale and block.hidden_channels == 8
