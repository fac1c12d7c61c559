"""GCNet: GCHead's keys, and with both fusions against mmseg's (the recipe, the default head: test_mmseg_networks)."""
from __future__ import annotations

from mmseg_heads import assert_head_equals_official, official_gc_head
from mmseg_keys import gc_head_keys
from visattn.models.segmentation.gcnet import GCHead


def test_keys_are_mmseg_names():
    assert sorted(GCHead(32, 5, channels=16).state_dict()) == sorted(gc_head_keys())
    assert sorted(official_gc_head().state_dict()) == sorted(gc_head_keys())


def test_head_with_both_fusions_equals_mmseg_head(device):
    kwargs = dict(pooling_type="avg", fusion_types=("channel_add", "channel_mul"))
    head = GCHead(32, 5, channels=16, dropout=0.0, **kwargs)
    assert_head_equals_official(head, official_gc_head(**kwargs), True, device)
