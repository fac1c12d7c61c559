"""ISANet: ISAHead's keys and the recipe's groups (the recipe and the head against mmseg's: test_mmseg_networks)."""
from __future__ import annotations

from mmseg_heads import HEADS, official_isa_head
from mmseg_keys import isa_head_keys
from visattn.models.segmentation.isanet import ISAHead


def test_keys_are_mmseg_names_under_isa():
    assert sorted(official_isa_head().state_dict()) == sorted(isa_head_keys())
    moved = ("global_relation", "local_relation", "out_conv")
    want = sorted(f"isa.{k}" if k.startswith(moved) else k for k in isa_head_keys())
    assert sorted(HEADS["isanet"][0]().state_dict()) == want


def test_recipe_groups_8_by_8_at_256_channels():
    isa = ISAHead(32, 5, channels=16).isa
    assert isa.down_factor == (8, 8) and isa.isa_channels == 256
