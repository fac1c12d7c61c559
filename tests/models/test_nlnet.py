"""mmseg's NLHead (Non-local network): its keys, against a functional composition (the recipe: test_mmseg_networks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers import randomize_, rel_err
from mmseg_keys import nl_head_keys
from visattn._official.mmcv import COUNTERPARTS
from visattn.models.segmentation.nlnet import NLHead


def features(batch=2, size=(5, 7), widths=(16, 24, 32)) -> list[torch.Tensor]:
    return [torch.randn(batch, c, *size) for c in widths]


def test_keys_are_mmseg_names():
    assert sorted(NLHead(32, 5, channels=16).state_dict()) == sorted(nl_head_keys())


def test_head_matches_functional_composition(device):
    head = randomize_(NLHead(32, 5, channels=16), seed=1).to(device).eval()
    feats = [f.to(device) for f in features()]
    sd = head.state_dict()

    def conv_bn_relu(prefix, x):
        y = F.conv2d(x, sd[f"{prefix}.conv.weight"], padding=1)
        bn = [sd[f"{prefix}.bn.{p}"] for p in ("running_mean", "running_var", "weight", "bias")]
        return F.relu(F.batch_norm(y, *bn, training=False, eps=1e-5))

    nl_block = COUNTERPARTS["nonlocal"].build(head.nl_block)  # mmcv's NonLocal2d with the same weights
    x = feats[-1]
    with torch.no_grad():
        out = conv_bn_relu("convs.1", nl_block(conv_bn_relu("convs.0", x)))
        want = F.conv2d(conv_bn_relu("conv_cat", torch.cat([x, out], 1)), sd["conv_seg.weight"], sd["conv_seg.bias"])
        got = head(feats)
    assert got.shape == (2, 5, 5, 7)
    assert rel_err(got, want) < 1e-4


def test_head_trains():
    head = randomize_(NLHead(32, 5, channels=16)).train()
    out = head(features())
    assert out.shape == (2, 5, 5, 7)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    assert head.nl_block.conv_out.bn.num_batches_tracked == 1
