"""The networks on mmseg's recipes, each against the recipe: builder defaults, mmseg's checkpoint names
converting onto the whole network, and the heads with a transcription computing as mmseg's.

A network on an mmseg recipe adds a row to ``RECIPES``, ``mmseg_keys.CHECKPOINT_KEYS`` and, with a
transcribed head, ``mmseg_heads.HEADS``; its own file keeps the checks particular to it.
"""
from __future__ import annotations

import pytest
import torch
from mmseg_heads import HEADS, assert_head_equals_official, assert_state_dict_round_trip
from mmseg_keys import CHECKPOINT_KEYS, assert_converts

from visattn.models import create_model
from visattn.models.registry import released_weights

AUX = {"out": 1.0, "aux": 0.4}
# name -> (small head arguments, loss weights, mmseg's configs/ folder, a few mmseg keys -> ours)
RECIPES = {
    "nlnet": ({}, AUX, "nonlocal_net", {
        "backbone.stem.4.running_var": "encoder.conv1.4.running_var", "backbone.stem.7.weight": "encoder.bn1.weight",
        "backbone.layer4.0.downsample.1.bias": "encoder.layer4.0.downsample.1.bias",
        "decode_head.nl_block.conv_out.bn.weight": "head.nl_block.conv_out.bn.weight",
        "auxiliary_head.convs.0.conv.weight": "aux.0.weight",
        "auxiliary_head.convs.0.bn.running_mean": "aux.1.running_mean", "auxiliary_head.conv_seg.bias": "aux.3.bias",
    }),
    "gcnet": ({}, AUX, "gcnet", {
        "decode_head.gc_block.channel_add_conv.1.weight": "head.gc_block.channel_add_conv.1.weight",
        "auxiliary_head.conv_seg.bias": "aux.3.bias", "backbone.stem.7.weight": "encoder.bn1.weight",
    }),
    "dnlnet": ({}, AUX, "dnlnet", {
        "decode_head.dnl_block.conv_mask.weight": "head.dnl_block.conv_mask.weight",
        "auxiliary_head.convs.0.bn.running_mean": "aux.1.running_mean",
        "backbone.layer4.2.conv3.weight": "encoder.layer4.2.conv3.weight",
    }),
    "emanet": ({}, AUX, "emanet", {
        "decode_head.ema_module.bases": "head.ema.bases",
        "decode_head.ema_mid_conv.conv.bias": "head.ema.ema_mid_conv.conv.bias",
        "decode_head.ema_out_conv.bn.running_var": "head.ema.ema_out_conv.bn.running_var",
        "decode_head.ema_in_conv.conv.weight": "head.ema_in_conv.conv.weight",
        "auxiliary_head.conv_seg.weight": "aux.3.weight",
    }),
    "isanet": ({}, AUX, "isanet", {
        "decode_head.global_relation.key_project.1.bn.weight": "head.isa.global_relation.key_project.1.bn.weight",
        "decode_head.local_relation.value_project.bias": "head.isa.local_relation.value_project.bias",
        "decode_head.out_conv.conv.weight": "head.isa.out_conv.conv.weight",
        "decode_head.in_conv.bn.bias": "head.in_conv.bn.bias",
    }),
    "pspnet": ({"channels": 16}, AUX, "pspnet", {
        "backbone.stem.7.weight": "encoder.bn1.weight",
        "decode_head.psp_modules.3.1.bn.running_var": "head.psp_modules.3.1.bn.running_var",
        "decode_head.bottleneck.conv.weight": "head.bottleneck.conv.weight",
        "auxiliary_head.convs.0.conv.weight": "aux.0.weight",
    }),
    "deeplabv3": ({"channels": 16}, AUX, "deeplabv3", {
        "backbone.layer4.2.bn3.bias": "encoder.layer4.2.bn3.bias",
        "decode_head.image_pool.1.conv.weight": "head.image_pool.1.conv.weight",
        "decode_head.aspp_modules.3.bn.weight": "head.aspp_modules.3.bn.weight",
        "auxiliary_head.conv_seg.bias": "aux.3.bias",
    }),
    "deeplabv3plus": ({"channels": 16}, AUX, "deeplabv3plus", {
        "backbone.layer1.0.downsample.0.weight": "encoder.layer1.0.downsample.0.weight",
        "decode_head.aspp_modules.1.depthwise_conv.conv.weight": "head.aspp_modules.1.depthwise_conv.conv.weight",
        "decode_head.sep_bottleneck.1.pointwise_conv.bn.bias": "head.sep_bottleneck.1.pointwise_conv.bn.bias",
        "decode_head.c1_bottleneck.conv.weight": "head.c1_bottleneck.conv.weight",
        "auxiliary_head.convs.0.bn.running_mean": "aux.1.running_mean",
    }),
    "ann": ({"channels": 16, "project_channels": 8}, AUX, "ann", {
        "decode_head.fusion.stages.0.query_project.bn.weight": "head.fusion.stages.0.query_project.bn.weight",
        "decode_head.context.stages.0.key_project.conv.weight": "head.context.stages.0.key_project.conv.weight",
        "decode_head.fusion.bottleneck.conv.weight": "head.fusion.bottleneck.conv.weight",
        "auxiliary_head.convs.0.conv.weight": "aux.0.weight",
    }),
    "ocrnet": ({"channels": 16, "ocr_channels": 8}, {"out": 1.0, "regions": 0.4}, "ocrnet", {
        "decode_head.0.convs.0.conv.weight": "head.regions.0.weight",
        "decode_head.0.convs.0.bn.running_var": "head.regions.1.running_var",
        "decode_head.0.conv_seg.bias": "head.regions.3.bias",
        "decode_head.1.object_context_block.query_project.1.bn.weight":
            "head.object_context_block.query_project.1.bn.weight",
        "decode_head.1.conv_seg.weight": "head.conv_seg.weight",
        "backbone.stem.0.weight": "encoder.conv1.0.weight",
    }),
}
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def test_every_recipe_has_its_checkpoint_keys():
    assert sorted(CHECKPOINT_KEYS) == sorted(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_builder_follows_the_recipe(name):
    head_kwargs, loss_weights, _, _ = RECIPES[name]
    model = create_model(name, num_classes=3, encoder="resnet18", **head_kwargs)
    assert model.loss_weights == loss_weights and model.align_corners is False
    if "aux" in loss_weights:  # mmseg's auxiliary FCN head: 256 wide on stage 3 (resnet18: 256 channels)
        assert (model.aux[0].in_channels, model.aux[0].out_channels, model.aux.in_index) == (256, 256, -2)
    else:
        assert model.aux is None
    x = torch.randn(2, 3, 33, 41)
    outs = model.train()(x)
    assert list(outs) == list(loss_weights) and all(o.shape == (2, 3, 33, 41) for o in outs.values())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 33, 41)


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("name", RECIPES)
def test_variant_is_the_recipe_on_resnet_v1c_with_mmseg_weights(name, depth):
    _, loss_weights, config, spots = RECIPES[name]
    variant = f"{name}_r{depth}_d8"
    with torch.device("meta"):
        model = create_model(variant)
        default = create_model(name)
    assert model.loss_weights == loss_weights and model.align_corners is False
    assert f"configs/{config} " in released_weights(variant).source and released_weights(name) is None
    assert_converts(model, CHECKPOINT_KEYS[name](BLOCKS[depth]), spots)
    if depth == 50:  # the short name's default encoder is the same ResNet-50-C
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        assert {k: v.shape for k, v in default.state_dict().items()} == shapes


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", HEADS)
def test_head_equals_mmseg_head(name, training, device):
    head, official, rtol = HEADS[name]
    assert_head_equals_official(head(), official(), training, device, rtol=rtol)


@pytest.mark.parametrize("name", HEADS)
def test_state_dict_round_trip_under_mmseg_names(name):
    head, official, _ = HEADS[name]
    assert_state_dict_round_trip(head(), official())
