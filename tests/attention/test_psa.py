"""PSA against the official EPSANet PSAModule formulation (functional, on the official keys)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visattn
from helpers import randomize_
from visattn.attention.psa import PyramidSqueezeAttention, SEWeight

KERNELS, GROUPS = (3, 5, 7, 9), (1, 4, 8, 16)


def official_shapes(cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    split, hidden = cout // 4, cout // 4 // 16
    shapes = {f"conv_{i + 1}.weight": (split, cin // g, k, k) for i, (k, g) in enumerate(zip(KERNELS, GROUPS))}
    shapes.update({
        "se.fc1.weight": (hidden, split, 1, 1), "se.fc1.bias": (hidden,),
        "se.fc2.weight": (split, hidden, 1, 1), "se.fc2.bias": (split,),
    })  # fmt: skip
    return shapes


def official_reference(sd, x, stride: int = 1, reverse: bool = True) -> torch.Tensor:
    """The official PSAModule forward: four convs, shared SE per branch, softmax over the branch
    axis of the (B, 4, S, 1, 1) vectors, then a loop that PREPENDS each weighted branch."""
    b = x.shape[0]
    xs = [
        F.conv2d(x, sd[f"conv_{i + 1}.weight"], stride=stride, padding=k // 2, groups=g)
        for i, (k, g) in enumerate(zip(KERNELS, GROUPS))
    ]
    split, h, w = xs[0].shape[1:]
    feats = torch.cat(xs, 1).view(b, 4, split, h, w)

    def se(t):
        t = F.relu(F.conv2d(F.adaptive_avg_pool2d(t, 1), sd["se.fc1.weight"], sd["se.fc1.bias"]))
        return torch.sigmoid(F.conv2d(t, sd["se.fc2.weight"], sd["se.fc2.bias"]))

    att = torch.cat([se(t) for t in xs], 1).view(b, 4, split, 1, 1).softmax(1)
    weighted = feats * att
    out = weighted[:, 0]
    for i in range(1, 4):
        out = torch.cat((weighted[:, i], out), 1) if reverse else torch.cat((out, weighted[:, i]), 1)
    return out


@pytest.mark.parametrize(
    "cin, cout, stride, size",
    [(64, None, 1, (7, 13)), (64, 128, 2, (7, 13)), (32, 64, 2, (8, 9)), (64, 64, 1, (1, 1)), (128, 64, 3, (5, 11))],
)
def test_matches_official(cin, cout, stride, size):
    m = randomize_(PyramidSqueezeAttention(cin, cout, stride=stride), seed=1).eval()
    x = torch.randn(2, cin, *size)
    with torch.no_grad():
        y = m(x)
        ref = official_reference(m.state_dict(), x, stride)
    expected_hw = tuple(-(-s // stride) for s in size)
    assert y.shape == (2, cout or cin, *expected_hw)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_concatenation_order_is_reversed():
    m = randomize_(PyramidSqueezeAttention(64), seed=2).eval()
    x = torch.randn(1, 64, 6, 6)
    with torch.no_grad():
        y = m(x)
        assert (y - official_reference(m.state_dict(), x, reverse=False)).abs().max() > 1e-3
        w = m.attention_weights(x)["branch"]
        # Branch 1 (conv_1, 3x3, weight index 0) fills the LAST 16 output channels.
        torch.testing.assert_close(y[:, 48:], m.conv_1(x) * w[:, 0])
        torch.testing.assert_close(y[:, :16], m.conv_4(x) * w[:, 3])


def test_attention_weights_are_a_softmax_over_branches():
    m = randomize_(PyramidSqueezeAttention(64), seed=3).eval()
    x = torch.randn(2, 64, 5, 7)
    w = m.attention_weights(x)["branch"]
    assert w.shape == (2, 4, 16, 1, 1)
    torch.testing.assert_close(w.sum(1), torch.ones(2, 16, 1, 1))
    with torch.no_grad():
        se = torch.stack([m.se(getattr(m, f"conv_{i}")(x)) for i in range(1, 5)], 1)
    torch.testing.assert_close(w, se.softmax(1))


def test_official_keys_and_load_official():
    m = PyramidSqueezeAttention(64, 128)
    shapes = official_shapes(64, 128)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == shapes
    gen = torch.Generator().manual_seed(4)
    sd = {k: torch.randn(s, generator=gen) * 0.3 for k, s in shapes.items()}
    visattn.load_official(m, {f"module.{k}": v for k, v in sd.items()}).eval()
    x = torch.randn(2, 64, 9, 10)
    with torch.no_grad():
        torch.testing.assert_close(m(x), official_reference(sd, x), rtol=1e-5, atol=1e-5)


def test_se_weight():
    se = randomize_(SEWeight(32), seed=5)
    x = torch.randn(2, 32, 4, 6)
    pooled = x.mean((2, 3))
    hidden = F.relu(pooled @ se.fc1.weight.view(2, 32).T + se.fc1.bias)
    expected = torch.sigmoid(hidden @ se.fc2.weight.view(32, 2).T + se.fc2.bias)
    with torch.no_grad():
        torch.testing.assert_close(se(x), expected[:, :, None, None])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"channels": 40, "out_channels": 64}, "conv group 16 must divide channels=40"),
        ({"channels": 64, "out_channels": 96}, "conv group 16 must divide .* = 24"),
        ({"channels": 64, "out_channels": 66}, "out_channels=66 is not divisible"),
        ({"channels": 64, "reduction": 32}, "reduction=32"),
        ({"channels": 64, "kernel_sizes": (3, 4, 7, 9)}, "odd"),
        ({"channels": 64, "kernel_sizes": (3, 5, 7)}, "same length"),
        ({"channels": 64, "stride": 0}, "stride"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PyramidSqueezeAttention(**kwargs)


def test_parameter_count_at_512():
    m = PyramidSqueezeAttention(512)
    convs = 128 * (512 * 9 + 128 * 25 + 64 * 49 + 32 * 81)
    se = 128 * 8 + 8 + 8 * 128 + 128
    assert sum(p.numel() for p in m.parameters()) == convs + se
