"""mmseg's decode heads, transcribed, against visattn's: values, gradients and state dicts with mmseg's key names.

Each case builds the transcription (``visattn._official.mmseg``) with random weights, loads its
state dict into visattn's head through the network's mmseg checkpoint conversion (``decode_head.*``
keys), and compares the outputs in eval mode and, in training mode with the same dropout masks,
the outputs, the BatchNorm statistics and the gradients of the inputs and of every parameter (paired by the
conversion's renaming). Both take mmseg's list of four maps (strides 4, 8, 8, 8).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

from helpers import randomize_, rel_err
from visattn._official import mmseg as mm
from visattn.models.segmentation.ann import ANNHead
from visattn.models.segmentation.deeplabv3 import ASPPHead
from visattn.models.segmentation.deeplabv3plus import DepthwiseSeparableASPPHead
from visattn.models.segmentation.ocrnet import OCRHead
from visattn.models.segmentation.pspnet import PSPHead

K = 5
WIDTHS = (8, 12, 16, 24)  # stage 1 (stride 4), stages 2, 3, 4 (stride 8)


@dataclass
class Case:
    visattn: Callable[[float], nn.Module]  # dropout -> visattn's head
    official: Callable[[float], nn.Module]  # dropout -> the transcription (decode_head's layout)
    run: Callable[[nn.Module, list], torch.Tensor] = lambda m, feats: m(feats)


def ocr_cascade(dropout: float) -> nn.Module:
    """mmseg's ``decode_head`` of ``ocrnet_r*-d8``: ``0`` the FCNHead of the regions, ``1`` the OCRHead."""
    return nn.ModuleDict({
        "0": mm.FCNHead(in_channels=WIDTHS[2], channels=10, num_convs=1, concat_input=False, in_index=2,
                        num_classes=K, dropout_ratio=dropout),
        "1": mm.OCRHead(in_channels=WIDTHS[3], channels=16, ocr_channels=8, in_index=3, num_classes=K,
                        dropout_ratio=dropout),
    })


CASES = {
    "pspnet": Case(
        lambda p: PSPHead(WIDTHS[3], K, channels=16, dropout=p),
        lambda p: mm.PSPHead(in_channels=WIDTHS[3], channels=16, pool_scales=(1, 2, 3, 6), in_index=3,
                             num_classes=K, dropout_ratio=p),
    ),
    "deeplabv3": Case(
        lambda p: ASPPHead(WIDTHS[3], K, channels=16, dilations=(1, 2, 3), dropout=p),
        lambda p: mm.ASPPHead(in_channels=WIDTHS[3], channels=16, dilations=(1, 2, 3), in_index=3,
                              num_classes=K, dropout_ratio=p),
    ),
    "deeplabv3plus": Case(
        lambda p: DepthwiseSeparableASPPHead(WIDTHS[3], K, WIDTHS[0], c1_channels=6, channels=16,
                                             dilations=(1, 2, 3), dropout=p),
        lambda p: mm.DepthwiseSeparableASPPHead(c1_in_channels=WIDTHS[0], c1_channels=6, in_channels=WIDTHS[3],
                                                channels=16, dilations=(1, 2, 3), in_index=3, num_classes=K,
                                                dropout_ratio=p),
    ),
    "ann": Case(
        lambda p: ANNHead(WIDTHS[2:], K, channels=16, project_channels=8, dropout=p),
        lambda p: mm.ANNHead(in_channels=list(WIDTHS[2:]), in_index=[2, 3], channels=16, project_channels=8,
                             query_scales=(1,), key_pool_scales=(1, 3, 6, 8), num_classes=K, dropout_ratio=p),
    ),
    "ocrnet": Case(
        lambda p: OCRHead(WIDTHS[3], WIDTHS[2], K, channels=16, ocr_channels=8, region_channels=10, dropout=p),
        ocr_cascade,
        run=lambda m, feats: m["1"](feats, m["0"](feats)),
    ),
}


def features(seed: int, requires_grad: bool = False, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sizes = [(14, 18)] + [(7, 9)] * 3
    return [
        torch.randn(2, c, *s, generator=gen, dtype=dtype).requires_grad_(requires_grad) for c, s in zip(WIDTHS, sizes)
    ]


def converted(head: nn.Module, official_state: dict) -> dict[str, torch.Tensor]:
    """The transcription's state dict as visattn's head keys: mmseg's ``decode_head.*`` converted."""
    out = head.convert_official_state_dict({f"decode_head.{k}": v for k, v in official_state.items()}, None)
    assert all(k.startswith("head.") for k in out)
    return {k.removeprefix("head."): v for k, v in out.items()}


def pair(name: str, dropout: float, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The transcription with random weights and visattn's head loaded (strictly) from its mmseg keys."""
    case = CASES[name]
    official = randomize_(case.official(dropout), seed=seed)
    head = case.visattn(dropout)
    head.load_state_dict(converted(head, official.state_dict()), strict=True)
    return head, official


def main_output(out) -> torch.Tensor:
    return out["out"] if isinstance(out, dict) else out


@pytest.mark.parametrize("name", CASES)
def test_state_dict_holds_mmseg_names(name):
    """visattn's keys are mmseg's (less the second name of a shared projection): conversion and back."""
    head, official = pair(name, 0.1)
    official_keys = set(official.state_dict())
    own = set(head.state_dict())
    assert set(converted(head, dict.fromkeys(official_keys))) == own
    if name not in ("ann", "ocrnet"):
        assert own == official_keys  # decode_head.* loads as it is
    # back: visattn's tensors in mmseg's layout reproduce the transcription's state dict
    for k, v in converted(head, official.state_dict()).items():
        assert torch.equal(head.state_dict()[k], v)


@pytest.mark.parametrize("name", CASES)
def test_eval_values_equal_the_transcription(name):
    head, official = pair(name, 0.1, seed=1)
    head.eval(), official.eval()
    feats = features(2)
    with torch.no_grad():
        got, want = head(feats), CASES[name].run(official, feats)
    assert got.shape == want.shape and got.shape[:2] == (2, K)
    assert want.std() > 0
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("name", CASES)
def test_training_values_statistics_and_gradients_equal_the_transcription(name):
    head, official = pair(name, 0.1, seed=3)
    head.double().train(), official.double().train()  # float64: differences are the code's, not rounding's
    feats_a, feats_b = features(4, requires_grad=True, dtype=torch.float64), features(4, True, torch.float64)
    with torch.random.fork_rng():  # the same dropout masks: both draw them in the same order
        torch.manual_seed(0)
        got = main_output(head(feats_a))
        torch.manual_seed(0)
        want = CASES[name].run(official, feats_b)
    assert rel_err(got, want) < 1e-10
    weight = torch.randn(want.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (got * weight).sum().backward()
    (want * weight).sum().backward()
    for a, b in zip(feats_a, feats_b):
        assert (a.grad is None) == (b.grad is None)
        if b.grad is not None:
            assert rel_err(a.grad, b.grad) < 1e-4
    own = dict(head.named_parameters())
    official_params = dict(official.named_parameters())
    names = converted(head, official_params)  # visattn name -> the transcription's parameter
    assert set(names) == set(own)
    # gradients that are zero in exact arithmetic (a bias before a training-mode BN) are rounding
    # noise in both: compared against the largest gradient
    scale = max(p.grad.abs().max().item() for p in official_params.values() if p.grad is not None)
    for key, p in names.items():
        assert p.grad is not None, key
        if name == "ocrnet" and key.startswith("regions."):
            continue  # only the regions' loss reaches them; checked below
        torch.testing.assert_close(own[key].grad, p.grad, rtol=1e-9, atol=1e-11 * scale, msg=key)
    buffers = converted(head, dict(official.named_buffers()))
    for key, b in dict(head.named_buffers()).items():
        torch.testing.assert_close(b, buffers[key], rtol=1e-10, atol=1e-12)


def test_ocr_regions_equal_the_cascade_first_head():
    head, official = pair("ocrnet", 0.0, seed=6)
    head.train(), official.train()
    feats = features(7)
    with torch.no_grad():
        regions = head(feats)["regions"]
        torch.testing.assert_close(regions, official["0"](feats), rtol=1e-5, atol=1e-6)
        weights = head.object_regions.attention_weights(regions)["region"]
        # the gather's weights are mmseg's SpatialGatherModule softmax
        want = torch.softmax(official["1"].spatial_gather_module.scale * regions.flatten(2), 2).view_as(regions)
    torch.testing.assert_close(weights, want)
    torch.testing.assert_close(weights.sum((2, 3)), torch.ones(2, K))
