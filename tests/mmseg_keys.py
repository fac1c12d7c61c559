"""State-dict key names of mmsegmentation checkpoints: what the networks on mmseg's recipes convert from.

Each network's decode-head names are written out by hand where the transcription's head is small
(a check of the transcription too), and read off the transcribed head otherwise."""
from __future__ import annotations

import torch

from visattn._official import mmseg as mm

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def conv_module_keys(prefix: str) -> list[str]:
    """mmcv ConvModule with BN: ``conv.weight`` (no bias) and the BN's five entries."""
    return [f"{prefix}.conv.weight", *(f"{prefix}.bn.{p}" for p in BN)]


def resnet_v1c_keys(blocks=(3, 4, 6, 3)) -> list[str]:
    """``backbone.*`` names of mmseg's ResNetV1c (deep stem, ``downsample`` on each stage's first block)."""
    keys = ["stem.0.weight", *(f"stem.1.{p}" for p in BN), "stem.3.weight", *(f"stem.4.{p}" for p in BN),
            "stem.6.weight", *(f"stem.7.{p}" for p in BN)]
    for stage, n in enumerate(blocks, 1):
        for i in range(n):
            for j in (1, 2, 3):
                keys += [f"layer{stage}.{i}.conv{j}.weight", *(f"layer{stage}.{i}.bn{j}.{p}" for p in BN)]
            if i == 0:
                keys += [f"layer{stage}.0.downsample.0.weight", *(f"layer{stage}.0.downsample.1.{p}" for p in BN)]
    return keys


def aux_head_keys() -> list[str]:
    """``auxiliary_head.*`` names of mmseg's auxiliary FCNHead (one ConvModule, ``conv_seg``)."""
    return [*conv_module_keys("convs.0"), "conv_seg.weight", "conv_seg.bias"]


def network_keys(decode_head: list[str], blocks=(3, 4, 6, 3)) -> list[str]:
    """Every key of an mmseg ``*_r*-d8`` checkpoint whose decode head has the keys ``decode_head``."""
    return (
        [f"backbone.{k}" for k in resnet_v1c_keys(blocks)]
        + [f"decode_head.{k}" for k in decode_head]
        + [f"auxiliary_head.{k}" for k in aux_head_keys()]
    )


def official_keys(build) -> list[str]:
    """The state-dict keys of a module of the mmseg transcription, built on the meta device (names only)."""
    with torch.device("meta"):
        return list(build().state_dict())


def assert_converts(model, mmseg_keys: list[str], spots: dict[str, str]) -> None:
    """``model.convert_official_state_dict`` maps ``mmseg_keys`` onto the model's keys exactly, and
    each mmseg key of ``spots`` onto its given key."""
    converted = model.convert_official_state_dict(dict.fromkeys(mmseg_keys))
    assert sorted(converted) == sorted(model.state_dict())
    for mmseg_key, key in spots.items():
        assert list(model.convert_official_state_dict({mmseg_key: None})) == [key]


def nl_head_keys() -> list[str]:
    """The ``decode_head.*`` names of an mmseg ``nonlocal_r*-d8`` checkpoint, without the prefix."""
    nl_block = [f"nl_block.{b}.conv.{p}" for b in ("g", "theta", "phi") for p in ("weight", "bias")]
    return [
        *conv_module_keys("convs.0"), *conv_module_keys("convs.1"), *nl_block,
        "nl_block.conv_out.conv.weight", *(f"nl_block.conv_out.bn.{p}" for p in BN),
        *conv_module_keys("conv_cat"), "conv_seg.weight", "conv_seg.bias",
    ]


def gc_head_keys() -> list[str]:
    """The ``decode_head.*`` names of an mmseg ``gcnet_r*-d8`` checkpoint, without the prefix."""
    transform = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    return [
        *conv_module_keys("convs.0"), *conv_module_keys("convs.1"), "gc_block.conv_mask.weight",
        "gc_block.conv_mask.bias", *(f"gc_block.channel_add_conv.{k}" for k in transform),
        *conv_module_keys("conv_cat"), "conv_seg.weight", "conv_seg.bias",
    ]


def dnl_head_keys() -> list[str]:
    """The ``decode_head.*`` names of an mmseg ``dnl_r*-d8`` checkpoint, without the prefix."""
    block = [f"dnl_block.{b}.conv.{p}" for b in ("g", "theta", "phi") for p in ("weight", "bias")]
    return [
        *conv_module_keys("convs.0"), *conv_module_keys("convs.1"), *block, "dnl_block.conv_out.conv.weight",
        *(f"dnl_block.conv_out.bn.{p}" for p in BN), "dnl_block.conv_mask.weight", "dnl_block.conv_mask.bias",
        *conv_module_keys("conv_cat"), "conv_seg.weight", "conv_seg.bias",
    ]


def ema_head_keys() -> list[str]:
    """The ``decode_head.*`` names of an mmseg ``emanet_r*-d8`` checkpoint, without the prefix."""
    return [
        "ema_module.bases", *conv_module_keys("ema_in_conv"), "ema_mid_conv.conv.weight", "ema_mid_conv.conv.bias",
        "ema_out_conv.conv.weight", *(f"ema_out_conv.bn.{p}" for p in BN), *conv_module_keys("bottleneck"),
        *conv_module_keys("conv_cat"), "conv_seg.weight", "conv_seg.bias",
    ]


def _relation_keys(prefix: str) -> list[str]:
    projects = [*conv_module_keys(f"{prefix}.key_project.0"), *conv_module_keys(f"{prefix}.key_project.1"),
                *conv_module_keys(f"{prefix}.query_project.0"), *conv_module_keys(f"{prefix}.query_project.1")]
    return [*projects, f"{prefix}.value_project.weight", f"{prefix}.value_project.bias",
            *conv_module_keys(f"{prefix}.output_project")]


def isa_head_keys() -> list[str]:
    """The ``decode_head.*`` names of an mmseg ``isanet_r*-d8`` checkpoint, without the prefix."""
    return [*conv_module_keys("in_conv"), *_relation_keys("global_relation"), *_relation_keys("local_relation"),
            *conv_module_keys("out_conv"), "conv_seg.weight", "conv_seg.bias"]


def psp_head_keys() -> list[str]:
    return official_keys(lambda: mm.PSPHead(in_channels=2048, channels=512, in_index=3, num_classes=19))


def aspp_head_keys() -> list[str]:
    return official_keys(lambda: mm.ASPPHead(in_channels=2048, channels=512, dilations=(1, 12, 24, 36), in_index=3,
                                             num_classes=19))


def sep_aspp_head_keys() -> list[str]:
    return official_keys(lambda: mm.DepthwiseSeparableASPPHead(
        c1_in_channels=256, c1_channels=48, in_channels=2048, channels=512, dilations=(1, 12, 24, 36), in_index=3,
        num_classes=19))


def ann_head_keys() -> list[str]:
    return official_keys(lambda: mm.ANNHead(in_channels=[1024, 2048], in_index=[2, 3], channels=512,
                                            project_channels=256, num_classes=19))


def ocr_cascade_keys() -> list[str]:
    """``decode_head.*`` names of an ``ocrnet_r*-d8`` checkpoint: ``0`` the FCNHead, ``1`` the OCRHead."""
    with torch.device("meta"):
        fcn = mm.FCNHead(in_channels=1024, channels=256, num_convs=1, concat_input=False, in_index=2, num_classes=19)
        ocr = mm.OCRHead(in_channels=2048, channels=512, ocr_channels=256, in_index=3, num_classes=19)
    return [f"decode_head.0.{k}" for k in fcn.state_dict()] + [f"decode_head.1.{k}" for k in ocr.state_dict()]


# the whole mmseg checkpoint of each network on an mmseg recipe, for ResNet blocks ``blocks``
CHECKPOINT_KEYS = {
    "nlnet": lambda blocks: network_keys(nl_head_keys(), blocks),
    "gcnet": lambda blocks: network_keys(gc_head_keys(), blocks),
    "dnlnet": lambda blocks: network_keys(dnl_head_keys(), blocks),
    "emanet": lambda blocks: network_keys(ema_head_keys(), blocks),
    "isanet": lambda blocks: network_keys(isa_head_keys(), blocks),
    "pspnet": lambda blocks: network_keys(psp_head_keys(), blocks),
    "deeplabv3": lambda blocks: network_keys(aspp_head_keys(), blocks),
    "deeplabv3plus": lambda blocks: network_keys(sep_aspp_head_keys(), blocks),
    "ann": lambda blocks: network_keys(ann_head_keys(), blocks),
    "ocrnet": lambda blocks: [f"backbone.{k}" for k in resnet_v1c_keys(blocks)] + ocr_cascade_keys(),
}
