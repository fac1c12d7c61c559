"""Dilated encoders for segmentation: any timm model with ``features_only=True, output_stride=8|16``.

Papers: Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR 2016,
https://arxiv.org/abs/1511.07122; He et al., "Bag of Tricks for Image Classification with
Convolutional Neural Networks" (the deep 3x3 stem), CVPR 2019, https://arxiv.org/abs/1812.01187

The encoder returns the last three feature maps (ResNet stages 2, 3 and 4: strides 8, 8, 8 at
``output_stride=8``); ``encoder.feature_info.channels()`` tells their widths. Its state dict keeps
timm's names, which for ResNets are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...).

Weights come from timm (``pretrained=True``: its default ImageNet weights, or those of the name's
pretrained tag or ``hf-hub:`` id; a failed download is a :class:`~visattn.weights.DownloadError`
naming the Hub id or URL and the cache file, and when the host cannot be resolved nothing is
tried and a cached file is read directly) or from a local file
(``pretrained_file``, or a path as ``pretrained``) holding a timm model's state dict, e.g.
``timm.create_model(name).state_dict()`` saved with safetensors or ``torch.save``. The file is read
without unpickling code and loaded strictly: only the classifier that a feature extractor lacks
(``fc.*``, ``head.*``, ...) may be left over; any other difference is a ``ValueError`` naming the
file and listing the missing, unexpected and mismatched keys.

The authors' backbones, in timm terms:
- DANet's released DANet101 (run with ``--backbone resnet101 --multi-grid --multi-dilation 4 8 16
  --no-deepstem``): torchvision-layout ``resnet101`` (7x7 stem), stage 3 dilated as torchvision
  (first block 1, then 2), stage-4 blocks dilated 4, 8, 16: ``multi_grid=(4, 8, 16)``.
- CCNet and FLANet: deep stem (3x3 convs 3->64 s2, 64->64, 64->128), which is timm's
  ``resnet50s``/``resnet101s`` (keys ``conv1.0/.1/.3/.4/.6``, ``bn1``), and the *first* block of
  stages 3 and 4 dilated at the stage's full rate (2 and 4): ``full_first_dilation=True``. CCNet
  also pools its stem with ``ceil_mode=True`` (``ceil_maxpool=True``), which changes feature
  sizes at odd input sizes.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import huggingface_hub
import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from ...weights import HUB_PREFIX, fetch, host_resolves, hub_cache_file, load_official, read_state_dict

__all__ = ["create_encoder"]


def _unknown_encoder(name: str) -> ValueError:
    close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown encoder {name!r}: not a timm model.{hint} See timm.list_models().")


def _resnet_stages(model: nn.Module, name: str, option: str) -> list[nn.Sequential]:
    stages = [getattr(model, f"layer{i}", None) for i in (3, 4)]
    if any(not isinstance(s, nn.Sequential) or not hasattr(s[0], "conv2") for s in stages):
        raise ValueError(f"{option} needs a ResNet-style encoder (layer3/layer4 of blocks), got {name!r}")
    return stages


def _set_dilation(block: nn.Module, dilation: int, first: bool) -> None:
    """Dilate a block's 3x3 convs: conv2 of a Bottleneck; conv1 (only, if ``first``) and conv2 of a BasicBlock."""
    convs = [block.conv2] if hasattr(block, "conv3") else ([block.conv1] if first else [block.conv1, block.conv2])
    for conv in convs:
        conv.dilation = conv.padding = (dilation, dilation)


def _feature_key(key: str, feature_keys: set[str]) -> str | None:
    """The feature extractor's name for the full model's ``key``: the same, or with the first dot
    made an underscore (timm's ``FeatureListNet`` flattens ``stages.0`` into ``stages_0``)."""
    for candidate in (key, key.replace(".", "_", 1)):
        if candidate in feature_keys:
            return candidate
    return None


def _load_encoder_file(model: nn.Module, name: str, path: str | os.PathLike, timm_kwargs: Mapping) -> None:
    """Load a timm ``name`` state dict from ``path`` into the feature extractor ``model``, strictly
    except for the full model's keys that ``model`` lacks (its classifier); the input convolution
    adapted to ``in_chans`` as timm adapts its downloads."""
    state = read_state_dict(path)
    own_keys = set(model.state_dict())
    with torch.device("meta"):  # key names and shapes only
        full = timm.create_model(name, **timm_kwargs)
    full_keys = full.state_dict().keys()
    _adapt_input_convs(state, full, path)
    head = {k for k in full_keys if _feature_key(k, own_keys) is None}
    renamed = {_feature_key(k, own_keys) or k: v for k, v in state.items() if k not in head}
    try:
        load_official(model, renamed)
    except ValueError as err:
        raise ValueError(f"pretrained file {path} does not fit encoder {name!r}: {err}") from err


def _adapt_input_convs(state: dict[str, torch.Tensor], full: nn.Module, path: str | os.PathLike) -> None:
    """The input convolutions' weights of ``state`` (of 3-channel images, or as the weights declare)
    summed or repeated to ``full``'s channels by timm's ``adapt_input_conv``, as ``timm.create_model(...,
    pretrained=True, in_chans=...)`` does with what it downloads."""
    cfg = full.pretrained_cfg
    convs = cfg.get("first_conv") or ()
    source_chans = (cfg.get("input_size") or (3,))[0]
    for conv in (convs,) if isinstance(convs, str) else convs:
        key, module = f"{conv}.weight", full.get_submodule(conv)
        if key in state and state[key].shape != module.weight.shape and state[key].ndim == 4:
            try:
                state[key] = adapt_input_conv(module.in_channels, state[key], base_chans=source_chans)
            except (NotImplementedError, ValueError, AssertionError) as err:
                raise ValueError(f"pretrained file {path}: its {key} of shape {tuple(state[key].shape)} cannot be "
                                 f"adapted to {module.in_channels} input channels ({err})") from None


def _weights_source(pretrained: bool | str | os.PathLike, pretrained_file: str | os.PathLike | None):
    """``(use timm's weights, local file)`` from the two arguments; a path as ``pretrained`` is a file."""
    if isinstance(pretrained, (str, os.PathLike)):
        if pretrained_file is not None:
            raise ValueError(f"pretrained={str(pretrained)!r} and pretrained_file={str(pretrained_file)!r}: give one file")
        return False, pretrained
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True, False or a file path, got {pretrained!r}")
    return pretrained and pretrained_file is None, pretrained_file


def create_encoder(
    name: str = "resnet50",
    output_stride: int = 8,
    pretrained: bool | str | os.PathLike = False,
    pretrained_file: str | os.PathLike | None = None,
    full_first_dilation: bool = False,
    multi_grid: Sequence[int] | None = None,
    ceil_maxpool: bool = False,
    stages: int = 3,
    **kwargs,
) -> nn.Module:
    """A timm feature extractor returning ``[stage2, stage3, stage4]`` feature maps (stage 1 first with
    ``stages=4``).

    Args:
        name: any timm model that supports ``features_only`` and ``output_stride``, with a
            pretrained tag (``resnet50.a1_in1k``: which weights ``pretrained=True`` loads) or as a
            Hugging Face Hub id (``hf-hub:timm/resnet50.a1_in1k``), as ``timm.create_model`` takes.
        output_stride: input size / feature size of the last map, 8 or 16.
        pretrained: ``True`` loads timm's default ImageNet weights (downloads through timm's cache);
            a path (``str`` or ``os.PathLike``) is a local file, as ``pretrained_file``.
        pretrained_file: load the encoder weights from this local file instead (see above); with
            ``in_chans`` other than the file's, its input convolution is adapted as timm adapts downloads.
        full_first_dilation: dilate the first block of dilated stages at the full stage rate
            (CCNet/FLANet backbones) instead of the previous stage's rate (torchvision, timm, DANet).
        multi_grid: dilation of each block of the last stage, cycled (DANet's ``--multi-dilation``);
            applied after ``full_first_dilation``.
        ceil_maxpool: stem max-pool with ``ceil_mode=True`` (CCNet's backbone).
        stages: how many of the last feature maps to return: 3, or 4 to add stage 1's (stride 4),
            which decoders such as DeepLabV3+'s read first.
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    _check_name(name, output_stride, stages)
    from_timm, weights_file = _weights_source(pretrained, pretrained_file)
    if from_timm:
        source, cache_file, url = _timm_download(name)
        if cache_file.is_file() and not huggingface_hub.constants.is_offline_mode() and not host_resolves(url):
            # cached, and the host is out of reach: timm would retry it before reading the cache
            from_timm, weights_file = False, cache_file
    if from_timm:
        model = fetch(lambda: _feature_extractor(name, output_stride, stages, True, kwargs), source=source,
                      cache_file=cache_file, what=f"encoder {name} (ImageNet weights)", check_host=url)
    else:
        model = _feature_extractor(name, output_stride, stages, False, kwargs)
    if weights_file is not None:
        _load_encoder_file(model, name, weights_file, kwargs)
    if full_first_dilation:
        _dilate_first_blocks_fully(model, name)
    if multi_grid is not None:
        _apply_multi_grid(model, name, multi_grid)
    if ceil_maxpool:
        _ceil_stem_pool(model, name)
    return model


def _timm_download(name: str) -> tuple[str, Path, str]:
    """``(source, cache file, URL)`` of the weights ``timm.create_model(name, pretrained=True)``
    downloads: a Hub id (timm's first choice) and the file in the Hugging Face cache, else its URL
    and the file in torch.hub's cache."""
    if name.startswith(HUB_PREFIX):
        repo, _, revision = name.removeprefix(HUB_PREFIX).partition("@")
        return name, hub_cache_file(repo, "model.safetensors", revision or None), huggingface_hub.constants.ENDPOINT
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        file = hub_cache_file(repo, cfg.hf_hub_filename or "model.safetensors", revision or None)
        return f"{HUB_PREFIX}{cfg.hf_hub_id}", file, huggingface_hub.constants.ENDPOINT
    url = (cfg.url if cfg is not None else None) or ""
    return url or name, Path(torch.hub.get_dir(), "checkpoints", os.path.basename(url) or name), url


def _check_name(name: str, output_stride: int, stages: int) -> None:
    """``name`` is a timm model (or a Hub id, which timm resolves), ``output_stride`` 8 or 16 and
    ``stages`` 3 or 4."""
    if stages not in (3, 4):
        raise ValueError(f"stages must be 3 or 4, got {stages!r}")
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    if timm.models.parse_model_name(name)[0] is None and not timm.is_model(name):  # hf-hub: ids resolve in timm
        raise _unknown_encoder(name)


def _feature_extractor(name: str, output_stride: int, stages: int, pretrained: bool,
                       timm_kwargs: Mapping) -> nn.Module:
    """timm's dilated feature extractor of ``name`` returning its last ``stages`` maps, checked to
    reach ``output_stride``."""
    try:
        model = timm.create_model(
            name,
            pretrained=pretrained,
            features_only=True,
            output_stride=output_stride,
            out_indices=tuple(range(-stages, 0)),
            **timm_kwargs,
        )
    except TypeError as err:
        if "output_stride" in str(err):
            raise ValueError(f"encoder {name!r} does not support output_stride (no dilated variant in timm)") from err
        raise
    reduction = model.feature_info.reduction()[-1]
    if reduction != output_stride:
        raise ValueError(f"encoder {name!r} gives output stride {reduction}, not the requested {output_stride}")
    return model


def _dilate_first_blocks_fully(model: nn.Module, name: str) -> None:
    """The first block of stages 3 and 4 at its stage's full dilation (CCNet/FLANet backbones)."""
    for stage in _resnet_stages(model, name, "full_first_dilation"):
        _set_dilation(stage[0], stage[-1].conv2.dilation[0], first=True)


def _apply_multi_grid(model: nn.Module, name: str, multi_grid: Sequence[int]) -> None:
    """The last stage's blocks dilated by ``multi_grid``, cycled (DANet's ``--multi-dilation``)."""
    if not multi_grid or any(int(d) < 1 for d in multi_grid):
        raise ValueError(f"multi_grid must be positive dilations, got {multi_grid!r}")
    last = _resnet_stages(model, name, "multi_grid")[-1]
    for i, block in enumerate(last):
        _set_dilation(block, int(multi_grid[i % len(multi_grid)]), first=False)


def _ceil_stem_pool(model: nn.Module, name: str) -> None:
    """The stem max-pool with ``ceil_mode=True`` (CCNet's backbone)."""
    if not isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        raise ValueError(f"ceil_maxpool needs an encoder with a stem max-pool, got {name!r}")
    model.maxpool.ceil_mode = True
