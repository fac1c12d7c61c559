"""EMANet: EMAHead's keys and the bases' training (the recipe and the head against mmseg's: test_mmseg_networks)."""
from __future__ import annotations

import torch

from mmseg_heads import HEADS, official_ema_head
from mmseg_keys import ema_head_keys
from visattn.models.segmentation.emanet import emanet


def test_keys_are_mmseg_names_but_the_units():
    keys = sorted(official_ema_head().state_dict())
    assert keys == sorted(ema_head_keys())
    renamed = {"ema_module.bases": "ema.bases"}
    want = sorted(renamed.get(k, k.replace("ema_mid_conv", "ema.ema_mid_conv").replace("ema_out_conv", "ema.ema_out_conv"))
                  for k in keys)
    assert sorted(HEADS["emanet"][0]().state_dict()) == want


def test_network_trains_the_bases_by_moving_average_not_the_mid_conv():
    model = emanet(num_classes=3, encoder="resnet18")
    assert not any(p.requires_grad for p in model.head.ema.ema_mid_conv.parameters())
    x = torch.randn(2, 3, 33, 41)
    bases = model.head.ema.bases.clone()
    model.train()(x)
    assert not torch.equal(model.head.ema.bases, bases)
