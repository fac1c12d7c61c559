"""State-dict key names of mmsegmentation checkpoints: what the networks on mmseg's recipes convert from."""
from __future__ import annotations

import torch

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
