"""FLA against the official FLANet block (transcribed) and a per-item, per-line loop."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import visattn
from helpers import randomize_, rel_err
from visattn.attention.fla import FullyAttentional

C = 16
SIZES = [(1, 1), (2, 2), (7, 13), (33, 47)]


class OfficialFLA(nn.Module):
    """maggiesong7/FullyAttentional ``FullyAttentionalBlock``, transcribed (BatchNorm2d for
    SyncBatchNorm). Note ``encode_h.repeat(width, 1, 1)``: the batch leak for B > 1."""

    def __init__(self, plane, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Linear(plane, plane)
        self.conv2 = nn.Linear(plane, plane)
        self.conv = nn.Sequential(nn.Conv2d(plane, plane, 3, stride=1, padding=1, bias=False), norm_layer(plane), nn.ReLU())
        self.softmax = nn.Softmax(dim=-1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        batch_size, _, height, width = x.size()
        feat_h = x.permute(0, 3, 1, 2).contiguous().view(batch_size * width, -1, height)
        feat_w = x.permute(0, 2, 1, 3).contiguous().view(batch_size * height, -1, width)
        encode_h = self.conv1(F.avg_pool2d(x, [1, width]).view(batch_size, -1, height).permute(0, 2, 1).contiguous())
        encode_w = self.conv2(F.avg_pool2d(x, [height, 1]).view(batch_size, -1, width).permute(0, 2, 1).contiguous())
        energy_h = torch.matmul(feat_h, encode_h.repeat(width, 1, 1))
        energy_w = torch.matmul(feat_w, encode_w.repeat(height, 1, 1))
        full_relation_h = self.softmax(energy_h)
        full_relation_w = self.softmax(energy_w)
        full_aug_h = torch.bmm(full_relation_h, feat_h).view(batch_size, width, -1, height).permute(0, 2, 3, 1)
        full_aug_w = torch.bmm(full_relation_w, feat_w).view(batch_size, height, -1, width).permute(0, 2, 1, 3)
        out = self.gamma * (full_aug_h + full_aug_w) + x
        out = self.conv(out)
        return out


def loop_fla(
    m: FullyAttentional, x: torch.Tensor, official_pairing: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Item by item, column by column and row by row. Returns ``y`` and the maps ``(B, W, C, C)``,
    ``(B, H, C, C)``. ``official_pairing`` reproduces the official bug: column ``w`` of item ``b``
    uses the context of item ``(b*W + w) % B`` (rows: ``(b*H + h) % B``)."""
    b, c, h, w = x.shape
    ctx_h = m.conv1(x.mean(3).transpose(1, 2))  # (B, H, C)
    ctx_w = m.conv2(x.mean(2).transpose(1, 2))  # (B, W, C)
    pre, maps_h, maps_w = [], [], []
    for i in range(b):
        xi = x[i]  # (C, H, W)
        out_h, out_w = torch.zeros_like(xi), torch.zeros_like(xi)
        e_h, e_w = [], []
        for col in range(w):
            feat = xi[:, :, col]  # (C, H)
            e = torch.softmax(feat @ ctx_h[(i * w + col) % b if official_pairing else i], dim=-1)
            out_h[:, :, col] = e @ feat
            e_h.append(e)
        for row in range(h):
            feat = xi[:, row, :]  # (C, W)
            e = torch.softmax(feat @ ctx_w[(i * h + row) % b if official_pairing else i], dim=-1)
            out_w[:, row, :] = e @ feat
            e_w.append(e)
        pre.append(m.gamma * (out_h + out_w) + xi)
        maps_h.append(torch.stack(e_h))
        maps_w.append(torch.stack(e_w))
    return m.conv(torch.stack(pre)), torch.stack(maps_h), torch.stack(maps_w)


def build(seed: int = 0, dtype=torch.float32) -> tuple[FullyAttentional, OfficialFLA]:
    ours = randomize_(FullyAttentional(C), seed).to(dtype).eval()
    official = OfficialFLA(C).to(dtype).eval()
    official.load_state_dict(ours.state_dict())
    return ours, official


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_matches_loop_and_official_at_batch_one(size, dtype, tol):
    ours, official = build(dtype=dtype)
    x = torch.randn(1, C, *size, dtype=dtype)
    with torch.no_grad():
        ref = official(x)
        loop, _, _ = loop_fla(ours, x)
        y_infer = ours(x)
    y_train = ours(x).detach()
    assert rel_err(loop, ref) < tol
    for y in (y_infer, y_train):
        assert rel_err(y, ref) < tol and rel_err(y, loop) < tol


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_leak_of_official_code_is_fixed(channels_last):
    ours, official = build(seed=1)
    x = torch.randn(2, C, 7, 13) * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        loop, _, _ = loop_fla(ours, x)
        y = ours(x)
        ref = official(x)
        alone = torch.cat([ours(x[i : i + 1]) for i in range(2)])
        leaky, _, _ = loop_fla(ours, x, official_pairing=True)
    assert rel_err(y, loop) < 1e-4 and rel_err(y, alone) < 1e-4
    assert rel_err(ref, loop) > 1e-2  # the official code mixes the two items' contexts ...
    assert rel_err(ref, leaky) < 1e-4  # ... exactly as tensor.repeat pairs them


@pytest.fixture(params=["function", "autograd"])
def path(request, monkeypatch):
    """Eager training (custom re-layout backward) or the plain-ops path used under compile/export."""
    if request.param == "autograd":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return request.param


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_match_official(channels_last, path):
    ours, official = build(seed=2, dtype=torch.float64)
    x = torch.randn(1, C, 5, 6, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn(x.shape, dtype=torch.float64)
    grads = []
    for m in (ours, official):
        xi = x.clone().requires_grad_()
        (m(xi) * g).sum().backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    names = ["input"] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, *grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_match_loop_for_a_batch(channels_last, path):
    ours, _ = build(seed=6, dtype=torch.float64)
    x = torch.randn(2, C, 4, 5, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn(x.shape, dtype=torch.float64)
    grads = []
    for fn in (ours, lambda t: loop_fla(ours, t)[0]):
        ours.zero_grad()
        xi = x.clone().requires_grad_()
        (fn(xi) * g).sum().backward()
        grads.append([xi.grad] + [p.grad.clone() for p in ours.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_non_dense_input():
    ours, _ = build(seed=7)
    x = torch.randn(1, C, 8, 12).to(memory_format=torch.channels_last)[:, :, ::2, ::3]
    with torch.no_grad():
        torch.testing.assert_close(ours(x), loop_fla(ours, x)[0], rtol=1e-4, atol=1e-5)


def test_attention_weights():
    ours, _ = build(seed=3)
    x = torch.randn(2, C, 5, 7)
    weights = ours.attention_weights(x)
    _, maps_h, maps_w = loop_fla(ours, x)
    assert weights["column"].shape == (2, 7, C, C) and weights["row"].shape == (2, 5, C, C)
    torch.testing.assert_close(weights["column"], maps_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weights["row"], maps_w, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weights["column"].sum(-1), torch.ones(2, 7, C))


def test_softmax_in_float32_under_autocast():
    ours, _ = build(seed=4)
    x = torch.randn(1, C, 6, 8)
    ref = ours.attention_weights(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weights = ours.attention_weights(x)
    assert weights["column"].dtype == torch.float32
    torch.testing.assert_close(weights["column"], ref["column"], rtol=0, atol=3e-2)


def test_identity_before_the_conv_at_init():
    m = FullyAttentional(C).eval()
    x = torch.randn(2, C, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.conv(x))


def test_load_official_gives_official_output():
    official = randomize_(OfficialFLA(C), 5).eval()
    sd = {k: v.clone() for k, v in official.state_dict().items()}
    assert {"conv1.weight", "conv2.bias", "conv.0.weight", "conv.1.running_var", "gamma"} <= set(sd)
    ours = visattn.load_official(FullyAttentional(C), sd).eval()
    with torch.no_grad():
        x = torch.randn(1, C, 7, 13)
        assert rel_err(ours(x), official(x)) < 1e-5
        x = torch.randn(3, C, 7, 13)
        assert rel_err(ours(x), loop_fla(ours, x)[0]) < 1e-5


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        FullyAttentional(0)
    assert "channels=16" in repr(FullyAttentional(C))
