"""FLA against the official FLANet block (:mod:`visattn._official.flanet`) and a per-item,
per-line loop."""
from __future__ import annotations

import pytest
import torch

from helpers import assert_gradients_close, gradients, randomize_, rel_err
from visattn._official.flanet import FullyAttentionalBlock
from visattn.attention.fla import FullyAttentional

C = 16
SIZES = [(1, 1), (2, 2), (7, 13), (33, 47)]


def loop_fla(m: FullyAttentional, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Item by item, column by column and row by row. Returns ``y`` and the maps ``(B, W, C, C)``,
    ``(B, H, C, C)``."""
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
            e = torch.softmax(feat @ ctx_h[i], dim=-1)
            out_h[:, :, col] = e @ feat
            e_h.append(e)
        for row in range(h):
            feat = xi[:, row, :]  # (C, W)
            e = torch.softmax(feat @ ctx_w[i], dim=-1)
            out_w[:, row, :] = e @ feat
            e_w.append(e)
        pre.append(m.gamma * (out_h + out_w) + xi)
        maps_h.append(torch.stack(e_h))
        maps_w.append(torch.stack(e_w))
    return m.conv(torch.stack(pre)), torch.stack(maps_h), torch.stack(maps_w)


def build(seed: int = 0, dtype=torch.float32) -> tuple[FullyAttentional, FullyAttentionalBlock]:
    ours = randomize_(FullyAttentional(C), seed).to(dtype).eval()
    official = FullyAttentionalBlock(C).to(dtype).eval()
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
    assert rel_err(y, loop) < 1e-4 and rel_err(y, alone) < 1e-4
    # The official code mixes the two items' contexts (tests/_official/test_flanet.py checks how).
    assert rel_err(ref, loop) > 1e-2


@pytest.fixture(params=["function", "autograd"])
def path(request, monkeypatch):
    """Eager training (custom re-layout backward) or the plain-ops path used under compile/export."""
    if request.param == "autograd":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return request.param


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("reference", ["official", "loop"])
def test_gradients_match_reference(reference, channels_last, path):
    """Input and parameter gradients: against the official block at batch 1 (it mixes batch items),
    against the loop for a batch."""
    ours, official = build(seed=2, dtype=torch.float64)
    x = torch.randn(1 if reference == "official" else 2, C, 5, 6, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn(x.shape, dtype=torch.float64)
    if reference == "official":
        want = gradients(official, official, x, g)
    else:
        want = gradients(lambda t: loop_fla(ours, t)[0], ours, x, g)
    assert_gradients_close(gradients(ours, ours, x, g), want, rtol=1e-9, atol=1e-11)


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


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        FullyAttentional(0)
    assert "channels=16" in repr(FullyAttentional(C))
