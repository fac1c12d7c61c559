"""NonLocal2d against an explicit einsum/softmax formulation and mmcv's NonLocal2d (transcribed)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import visattn
from helpers import LargestAllocation, SoftmaxDtypes, assert_gradients_close, gradients, randomize_, rel_err
from visattn._official.mmcv import COUNTERPARTS
from visattn.attention.non_local import NonLocal2d

C = 16
H, W = 7, 9  # odd sizes: with sub_sample the last row and column fall outside every 2x2 window


def tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (the autograd leaves) and buffers of ``m`` by state-dict name."""
    return {**dict(m.named_buffers()), **dict(m.named_parameters())}


def reference(m: NonLocal2d, x: torch.Tensor) -> torch.Tensor:
    """The embedded Gaussian block written out: 1x1 convs as einsums, the full N x M softmax.

    A norm after ``conv_out`` is BatchNorm with running statistics (the module in eval mode).
    """
    sd = tensors(m)
    b, c, h, w = x.shape
    pooled = ".0" if m.sub_sample else ""

    def conv1x1(prefix, a):
        y = torch.einsum("oc,bchw->bohw", sd[f"{prefix}.conv.weight"][:, :, 0, 0], a)
        bias = sd.get(f"{prefix}.conv.bias")
        return y if bias is None else y + bias[None, :, None, None]

    theta, phi, g = conv1x1("theta", x), conv1x1(f"phi{pooled}", x), conv1x1(f"g{pooled}", x)
    if m.sub_sample:
        phi, g = F.max_pool2d(phi, 2), F.max_pool2d(g, 2)
    scores = torch.einsum("bdi,bdj->bij", theta.flatten(2), phi.flatten(2))  # (B, N, M)
    if m.use_scale:
        scores = scores / theta.shape[1] ** 0.5
    y = torch.einsum("bij,bdj->bdi", torch.softmax(scores, dim=-1), g.flatten(2)).reshape(b, -1, h, w)
    out = conv1x1("conv_out", y)
    if m.norm_layer is not None:
        mean, var = sd["conv_out.bn.running_mean"], sd["conv_out.bn.running_var"]
        scale = sd["conv_out.bn.weight"] / (var + m.conv_out.bn.eps).sqrt()
        out = (out - mean[None, :, None, None]) * scale[None, :, None, None] + sd["conv_out.bn.bias"][None, :, None, None]
    return x + out


def build(seed=0, dtype=torch.float64, **kwargs) -> NonLocal2d:
    return randomize_(NonLocal2d(C, **kwargs), seed).to(dtype).eval()


CONFIGS = [
    {},
    {"use_scale": False},
    {"sub_sample": True},
    {"norm_layer": nn.BatchNorm2d},
    {"sub_sample": True, "use_scale": False, "norm_layer": nn.BatchNorm2d},
]


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("chunk_size", [5, None])
def test_forward_matches_reference(kwargs, chunk_size, device):
    m = build(chunk_size=chunk_size, **kwargs).to(device)
    x = torch.randn(2, C, H, W, dtype=torch.float64, device=device)
    with torch.no_grad():
        assert rel_err(m(x), reference(m, x)) < 1e-10


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_gradients_match_reference(kwargs):
    m = build(seed=1, chunk_size=5, **kwargs)
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    weight = torch.randn(2, C, H, W, dtype=torch.float64)  # a generic upstream gradient
    got, want = gradients(m, m, x, weight), gradients(lambda x: reference(m, x), m, x, weight)
    # phi's bias adds theta_i . b_phi to every score of row i (max-pooling commutes with it):
    # softmax ignores it, its gradient is 0.
    phi_bias = "phi.0.conv.bias" if m.sub_sample else "phi.conv.bias"
    assert got[phi_bias].abs().max() < 1e-10 * want[phi_bias.replace("bias", "weight")].abs().max()
    for name in got:
        if name != phi_bias:
            assert rel_err(got[name], want[name]) < 1e-10, name


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("training", [False, True])
def test_matches_mmcv(kwargs, training, device):
    m = build(seed=2, **kwargs).to(device).train(training)
    official = COUNTERPARTS["nonlocal"].build(m)
    x = torch.randn(2, C, H, W, dtype=torch.float64, device=device)
    weight = torch.randn(2, C, H, W, dtype=torch.float64, device=device)
    got, want = gradients(m, m, x, weight), gradients(official, official, x, weight)
    # Some gradients are 0 up to rounding (phi's bias; g's bias under training-mode BatchNorm,
    # which removes the constant it adds): an absolute floor at the scale of the largest one.
    floor = 1e-12 * max(g.abs().max() for g in want.values())
    assert_gradients_close(got, want, rtol=1e-9, atol=floor)
    for key, value in official.state_dict().items():  # the BatchNorm statistics moved alike
        torch.testing.assert_close(m.state_dict()[key], value, rtol=1e-12, atol=0)


@pytest.mark.parametrize("sub_sample", [False, True])
def test_never_allocates_the_n_by_n_map(monkeypatch, sub_sample):
    monkeypatch.setattr(NonLocal2d, "chunk_bytes", 2**20)  # the automatic chunk size must respect it
    m = randomize_(NonLocal2d(C, sub_sample=sub_sample, norm_layer=nn.BatchNorm2d))
    x = torch.randn(1, C, 64, 64, requires_grad=True)
    n = 64 * 64  # the N x N map would take 64 MiB, the N x N/4 map of sub_sample 16 MiB
    with LargestAllocation() as mode:
        m(x).sum().backward()
    assert mode.max_bytes <= 2**20
    keys = n // 4 if sub_sample else n
    chunks = -(-n // (2**20 // (4 * keys)))
    softmaxes = mode.calls["_softmax"] + mode.calls["softmax"]
    assert softmaxes == 2 * chunks  # backward was recorded: it recomputes each chunk
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())


def test_allocation_probe_sees_the_naive_map():
    m = randomize_(NonLocal2d(C))
    x = torch.randn(1, C, 24, 24)
    with torch.no_grad(), LargestAllocation() as mode:
        COUNTERPARTS["nonlocal"].build(m)(x)
    assert mode.max_bytes >= (24 * 24) ** 2 * 4


@pytest.mark.parametrize("sub_sample", [False, True])
def test_softmax_is_fp32_under_bf16_autocast(sub_sample):
    m = build(dtype=torch.float32, sub_sample=sub_sample, chunk_size=7).train()
    x = torch.randn(2, C, H, W, generator=torch.Generator().manual_seed(0), requires_grad=True)
    want_y = m(x)
    want_y.sum().backward()
    want = x.grad.clone()
    x.grad = None
    with SoftmaxDtypes() as mode:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
            weights = m.attention_weights(x, [(1, 2)])["position"]
        y.sum().backward()
    assert mode.dtypes == {torch.float32} and weights.dtype == torch.float32
    assert y.dtype == torch.float32  # conv_out's bf16 output added to the fp32 input
    assert rel_err(y, want_y) < 0.05
    if not sub_sample:  # bf16 rounding can move a 2x2 max-pool's argmax, and its gradient with it
        assert rel_err(x.grad, want) < 0.05


@pytest.mark.parametrize("sub_sample", [False, True])
def test_attention_weights_are_the_reference_rows(sub_sample):
    m = build(sub_sample=sub_sample)
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    sd = tensors(m)
    pooled = ".0" if sub_sample else ""

    def conv1x1(prefix):
        w, b = sd[f"{prefix}.conv.weight"][:, :, 0, 0], sd[f"{prefix}.conv.bias"]
        return torch.einsum("oc,bchw->bohw", w, x) + b[None, :, None, None]

    theta, phi = conv1x1("theta"), conv1x1(f"phi{pooled}")
    phi = F.max_pool2d(phi, 2) if sub_sample else phi
    scores = torch.einsum("bdi,bdj->bij", theta.flatten(2), phi.flatten(2)) / theta.shape[1] ** 0.5
    attn = torch.softmax(scores, dim=-1).detach()
    key_grid = (H // 2, W // 2) if sub_sample else (H, W)

    queries = [(0, 0), (2, 5), (H - 1, W - 1)]
    rows = m.attention_weights(x, queries)["position"]
    assert rows.shape == (2, 3, *key_grid) and not rows.requires_grad
    torch.testing.assert_close(rows.sum((2, 3)), torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(rows.flatten(2), attn[:, [0, 2 * W + 5, H * W - 1]])
    full = m.attention_weights(x)["position"]
    assert full.shape == (2, H * W, *key_grid)
    torch.testing.assert_close(full.flatten(2), attn)
    with pytest.raises(ValueError, match="outside"):
        m.attention_weights(x, [(H, 0)])


@pytest.mark.parametrize("sub_sample", [False, True])
def test_attention_maps(sub_sample):
    m = build(sub_sample=sub_sample)
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    points = [(0, 0), (3, 4)]
    rows = m.attention_weights(x, points)["position"][0]
    maps = m.attention_maps(x, points)
    assert [a.key for a in maps] == ["nonlocal_q0", "nonlocal_q1"]
    assert [a.title for a in maps] == [f"Non-local: attention of query {p}" for p in points]
    for amap, row, p in zip(maps, rows, points):
        assert amap.values.shape == (H, W) and amap.spatial and amap.point == p
        values = torch.from_numpy(amap.values).double()
        if sub_sample:  # pooled key (r, c) covers cells (2r..2r+1, 2c..2c+1); the odd last row/column: 0
            torch.testing.assert_close(values[: H - 1 : 2, : W - 1 : 2], row, rtol=1e-6, atol=0)
            torch.testing.assert_close(values[1::2, 1::2], row, rtol=1e-6, atol=0)
            assert values[-1].abs().max() == 0 and values[:, -1].abs().max() == 0
        else:
            torch.testing.assert_close(values, row, rtol=1e-6, atol=0)
    assert m.attention_maps(x)[0].point == (H // 2, W // 2)
    with pytest.raises(ValueError, match="one feature map"):
        m.attention_maps(torch.randn(2, C, H, W, dtype=torch.float64))


def test_keys_are_mmcv_convmodule_names():
    assert list(NonLocal2d(C).state_dict()) == [
        f"{branch}.conv.{p}" for branch in ("g", "theta", "phi", "conv_out") for p in ("weight", "bias")
    ]
    normed = NonLocal2d(C, sub_sample=True, norm_layer=nn.BatchNorm2d).state_dict()
    assert sorted(normed) == sorted(
        ["g.0.conv.weight", "g.0.conv.bias", "theta.conv.weight", "theta.conv.bias", "phi.0.conv.weight",
         "phi.0.conv.bias", "conv_out.conv.weight"]
        + [f"conv_out.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    )


def test_load_official_takes_mmseg_nl_block_weights():
    # the ``decode_head.nl_block.*`` part of an mmseg NLHead checkpoint (norm: SyncBN, named ``bn``)
    official = randomize_(COUNTERPARTS["nonlocal"].build(NonLocal2d(C, norm_layer=nn.BatchNorm2d)), seed=3).eval()
    sd = official.state_dict()
    assert {"conv_out.bn.weight", "conv_out.bn.running_var"} <= set(sd) and "conv_out.conv.bias" not in sd
    m = visattn.load_official(NonLocal2d(C, norm_layer=nn.BatchNorm2d), sd).eval()
    for key, value in sd.items():
        assert torch.equal(m.state_dict()[key], value), key
    x = torch.randn(2, C, 6, 7)
    with torch.no_grad():
        assert rel_err(m(x), official(x)) < 1e-5 and rel_err(m(x), reference(m, x)) < 1e-5


@pytest.mark.parametrize("norm_layer", [None, nn.BatchNorm2d])
def test_identity_at_initialisation(norm_layer):
    m = NonLocal2d(64, norm_layer=norm_layer)
    x = torch.randn(2, 64, 4, 5)
    with torch.no_grad():
        assert torch.equal(m(x), x)
    for branch in (m.g, m.theta, m.phi):  # mmcv's normal(0, 0.01) embeddings
        assert 0.009 < branch.conv.weight.std() < 0.011 and not branch.conv.bias.any()
    if norm_layer is None:
        assert not m.conv_out.conv.weight.any() and not m.conv_out.conv.bias.any()
    else:  # Kaiming-normal, fan-out (64 outputs), ReLU gain: std sqrt(2 / 64)
        assert 0.9 < m.conv_out.conv.weight.std() / (2 / 64) ** 0.5 < 1.1
        assert not m.conv_out.bn.weight.any() and not m.conv_out.bn.bias.any()


def test_hidden_channels_and_bad_arguments():
    assert NonLocal2d(9).hidden_channels == 4
    assert NonLocal2d(1).hidden_channels == 1  # mmcv keeps one channel when C // reduction is 0
    with pytest.raises(ValueError, match="channels"):
        NonLocal2d(0)
    with pytest.raises(ValueError, match="reduction"):
        NonLocal2d(16, reduction=0)
    with pytest.raises(ValueError, match="chunk_size"):
        NonLocal2d(16, chunk_size=0)
    with pytest.raises(ValueError, match="sub_sample needs H, W >= 2"):
        NonLocal2d(16, sub_sample=True)(torch.randn(1, 16, 1, 5))


def test_registered_with_its_arguments():
    m = visattn.create_attention("nonlocal", 32, sub_sample=True, use_scale=False)
    assert isinstance(m, NonLocal2d)
    assert m.extra_repr() == "channels=32, reduction=2, use_scale=False, sub_sample=True, chunk_size=None"
