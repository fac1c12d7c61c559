"""mmseg's NLHead (Non-local network) against a functional composition, its keys and mmseg's checkpoint names."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers import randomize_, rel_err
from mmseg_keys import BN, conv_module_keys, network_keys
from visattn._official.mmcv import COUNTERPARTS
from visattn.models.segmentation.nlnet import NLHead, nlnet, nlnet_r50_d8


def nl_head_keys() -> list[str]:
    """The ``decode_head.*`` names of an mmseg ``nonlocal_r*-d8`` checkpoint, without the prefix."""
    nl_block = [f"nl_block.{b}.conv.{p}" for b in ("g", "theta", "phi") for p in ("weight", "bias")]
    return [
        *conv_module_keys("convs.0"), *conv_module_keys("convs.1"), *nl_block,
        "nl_block.conv_out.conv.weight", *(f"nl_block.conv_out.bn.{p}" for p in BN),
        *conv_module_keys("conv_cat"), "conv_seg.weight", "conv_seg.bias",
    ]


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


def test_network_training_and_eval_outputs():
    model = nlnet(num_classes=3, encoder="resnet18", aux=True)
    assert model.loss_weights == {"out": 1.0, "aux": 0.4} and model.align_corners is False
    assert model.aux[0].out_channels == 256 and model.aux[0].in_channels == 256  # resnet18's stage 3
    x = torch.randn(2, 3, 33, 41)
    outs = model.train()(x)
    assert set(outs) == {"out", "aux"} and all(o.shape == (2, 3, 33, 41) for o in outs.values())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 33, 41)


def test_mmseg_checkpoint_keys_convert_to_the_network():
    model = nlnet_r50_d8(num_classes=19)
    mmseg_keys = network_keys(nl_head_keys())
    converted = model.convert_official_state_dict({k: torch.zeros(()) for k in mmseg_keys})
    own = model.state_dict()
    assert sorted(converted) == sorted(own)
    spots = {
        "backbone.stem.4.running_var": "encoder.conv1.4.running_var", "backbone.stem.7.weight": "encoder.bn1.weight",
        "backbone.layer4.0.downsample.1.bias": "encoder.layer4.0.downsample.1.bias",
        "decode_head.nl_block.conv_out.bn.weight": "head.nl_block.conv_out.bn.weight",
        "auxiliary_head.convs.0.conv.weight": "aux.0.weight", "auxiliary_head.convs.0.bn.running_mean": "aux.1.running_mean",
        "auxiliary_head.conv_seg.bias": "aux.3.bias",
    }
    for mmseg_key, key in spots.items():
        assert list(model.convert_official_state_dict({mmseg_key: torch.zeros(())})) == [key]
    model.load_state_dict({k: torch.full_like(own[k], 0.5) for k in converted})
