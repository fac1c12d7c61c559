"""GlobalContextBlock against an explicit formulation and mmcv's ContextBlock (transcribed)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visattn
from helpers import assert_gradients_close, gradients, match_reference, randomize_
from visattn._official.mmseg import COUNTERPARTS, ContextBlock
from visattn.attention.gc import GlobalContextBlock

C = 16
CONFIGS = [
    {},
    {"pooling_type": "avg"},
    {"fusion_types": ("channel_mul",)},
    {"pooling_type": "att", "fusion_types": ("channel_add", "channel_mul"), "ratio": 1 / 8},
]


def reference(m: GlobalContextBlock, x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(T_mul(c)) + T_add(c)`` with ``c`` the softmax-weighted (or mean) context, written out."""
    p = dict(m.named_parameters())
    if m.pooling_type == "att":
        logits = torch.einsum("c,bchw->bhw", p["conv_mask.weight"][0, :, 0, 0], x) + p["conv_mask.bias"]
        weights = torch.softmax(logits.flatten(1), -1).view_as(logits)
        context = torch.einsum("bhw,bchw->bc", weights, x)
    else:
        context = x.mean((2, 3))

    def transform(name):
        t = context @ p[f"{name}.0.weight"][:, :, 0, 0].T + p[f"{name}.0.bias"]
        t = F.layer_norm(t, t.shape[1:], p[f"{name}.1.weight"][:, 0, 0], p[f"{name}.1.bias"][:, 0, 0])
        t = torch.relu(t) @ p[f"{name}.3.weight"][:, :, 0, 0].T + p[f"{name}.3.bias"]
        return t[:, :, None, None]

    out = x
    if "channel_mul" in m.fusion_types:
        out = out * torch.sigmoid(transform("channel_mul_conv"))
    if "channel_add" in m.fusion_types:
        out = out + transform("channel_add_conv")
    return out


def build(seed=0, **kwargs) -> GlobalContextBlock:
    return randomize_(GlobalContextBlock(C, **kwargs), seed).double().eval()


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_forward_and_gradients_match_reference(kwargs):
    m = build(**kwargs)
    got, want = match_reference(m, lambda x: reference(m, x), (2, C, 5, 7), rtol=1e-12)
    # conv_mask.bias shifts every softmax logit alike: its gradient is 0 up to rounding, hence a floor
    assert_gradients_close(got, want, rtol=1e-9, atol=1e-12 * max(g.abs().max() for g in want.values()))


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_matches_mmcv(kwargs, device):
    m = build(seed=1, **kwargs).to(device).train()
    official = COUNTERPARTS["gc"].build(m)
    assert isinstance(official, ContextBlock) and official.planes == m.planes
    x = torch.randn(2, C, 6, 9, dtype=torch.float64, device=device)
    weight = torch.randn(2, C, 6, 9, dtype=torch.float64, device=device)
    got, want = gradients(m, m, x, weight), gradients(official, official, x, weight)
    assert_gradients_close(got, want, rtol=1e-9, atol=1e-12 * max(g.abs().max() for g in want.values()))


def test_context_weights_and_map():
    m = build()
    x = torch.randn(2, C, 5, 7, dtype=torch.float64)
    w = m.attention_weights(x)["context"]
    logits = torch.einsum("c,bchw->bhw", m.conv_mask.weight[0, :, 0, 0], x) + m.conv_mask.bias
    torch.testing.assert_close(w, torch.softmax(logits.flatten(1), -1).view(2, 5, 7))
    (amap,) = m.attention_maps(x[:1], [(1, 2)])
    assert amap.key == "gc_context" and amap.point is None and amap.values.shape == (5, 7)
    torch.testing.assert_close(torch.from_numpy(amap.values).double(), w[0], rtol=1e-6, atol=1e-12)
    avg = build(pooling_type="avg").attention_weights(x)["context"]
    torch.testing.assert_close(avg, torch.full_like(avg, 1 / 35))


def test_keys_initialisation_and_identity():
    m = GlobalContextBlock(64)
    assert sorted(m.state_dict()) == sorted(
        ["conv_mask.weight", "conv_mask.bias"] + [f"channel_add_conv.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")]
    )
    assert m.planes == 16 and not m.conv_mask.bias.any()
    torch.manual_seed(0)
    wide = GlobalContextBlock(2048).conv_mask.weight
    assert 0.95 < wide.std() / (2 / 2048) ** 0.5 < 1.05  # Kaiming-normal, fan-in, ReLU gain
    x = torch.randn(2, 64, 4, 5)
    with torch.no_grad():
        assert torch.equal(m(x), x)
        assert torch.allclose(GlobalContextBlock(64, fusion_types=("channel_mul",))(x), x / 2)


def test_bad_arguments_and_registration():
    with pytest.raises(ValueError, match="pooling_type"):
        GlobalContextBlock(16, pooling_type="max")
    with pytest.raises(ValueError, match="fusion_types"):
        GlobalContextBlock(16, fusion_types=())
    with pytest.raises(ValueError, match="bottleneck"):
        GlobalContextBlock(3, ratio=1 / 4)
    m = visattn.create_attention("gc", 32, ratio=1 / 8)
    assert m.extra_repr() == "channels=32, ratio=0.125, pooling_type='att', fusion_types=('channel_add',)"
