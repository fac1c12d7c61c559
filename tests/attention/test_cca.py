"""CCA / RCCA against the official CCNet code (:mod:`visattn._official.ccnet`) and a dense N x N
formulation."""
from __future__ import annotations

import pytest
import torch

import visattn
from helpers import assert_gradients_close, gradients, randomize_, rel_err
from visattn._official import ccnet
from visattn.attention.cca import CrissCrossAttention, RecurrentCrissCrossAttention

C = 32  # official reduction 8 -> 4 query/key channels
SIZES = [(1, 1), (2, 2), (7, 13), (33, 47)]


def dense_cca(m: CrissCrossAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full N x N scores, softmax over the criss-cross set {same row} u {same column} (a set: the
    centre once). Returns ``y`` and the ``(B, N, N)`` attention."""
    b, c, h, w = x.shape

    def conv(layer, t):
        return torch.einsum("oc,bcn->bon", layer.weight.flatten(1), t.flatten(2)) + layer.bias[:, None]

    q, k, v = conv(m.query_conv, x), conv(m.key_conv, x), conv(m.value_conv, x)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    allowed = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])
    scores = torch.einsum("bci,bcj->bij", q, k).masked_fill(~allowed, float("-inf"))
    att = scores.softmax(-1)
    out = torch.einsum("bij,bcj->bci", att, v).view(b, c, h, w)
    return m.gamma * out + x, att


def build(seed: int = 0, dtype=torch.float32) -> tuple[CrissCrossAttention, ccnet.CrissCrossAttention]:
    ours = randomize_(CrissCrossAttention(C), seed).to(dtype)
    official = ccnet.CrissCrossAttention(C).to(dtype)
    official.load_state_dict(ours.state_dict())
    return ours, official


@pytest.fixture(params=["function", "autograd"])
def path(request, monkeypatch):
    """The eager training path (hand-written backward) or the plain-ops path (compile/export)."""
    if request.param == "autograd":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return request.param


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_official_and_dense(size, dtype, tol, channels_last):
    ours, official = build(dtype=dtype)
    x = torch.randn(2 if size[0] < 33 else 1, C, *size, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = official(x)
        dense, _ = dense_cca(ours, x)
        y_infer = ours(x)
    y_train = ours(x).detach()  # grad enabled: the autograd.Function path
    assert rel_err(dense, ref) < tol
    for y in (y_infer, y_train):
        assert rel_err(y, ref) < tol and rel_err(y, dense) < tol
        assert (y - x).abs().max() > 1e-3


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 13)])
@pytest.mark.parametrize("channels_last", [False, True])
# "sum": y.sum() hands the backward an expanded (stride-0) gradient; "sum, x fixed": no input
# gradient is asked for, and the backward skips that part.
@pytest.mark.parametrize("upstream", ["random", "sum", "sum, x fixed"])
def test_gradients_match_official(size, channels_last, upstream, path):
    ours, official = build(seed=1, dtype=torch.float64)
    x = torch.randn(2, C, *size, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn(x.shape, dtype=torch.float64) if upstream == "random" else None
    input_grad = upstream != "sum, x fixed"
    got, want = (gradients(m, m, x, g, input_grad) for m in (ours, official))
    assert (got["input"] is None) == (not input_grad)
    # key_conv.bias shifts every score of a query equally: its true gradient is 0.
    assert_gradients_close(got, want, rtol=1e-9, atol=1e-11)


def test_gradients_float32():
    ours, official = build(seed=2)
    x = torch.randn(1, C, 9, 11)

    def square_sum_gradients(m):
        return gradients(lambda t: m(t).square(), m, x)

    got, want = square_sum_gradients(ours), square_sum_gradients(official)
    for name in ("input", "query_conv.weight", "value_conv.weight", "gamma"):
        assert rel_err(got[name], want[name]) < 1e-4, name


def test_non_dense_input():
    ours, official = build(seed=9)
    x = torch.randn(2, C, 8, 12).to(memory_format=torch.channels_last)[:, :, ::2, ::3].requires_grad_()
    y = ours(x)
    y.sum().backward()
    with torch.no_grad():
        assert rel_err(y, official(x)) < 1e-4 and rel_err(ours(x), official(x)) < 1e-4


def test_attention_weights_are_the_single_softmax():
    ours, _ = build(seed=3)
    x = torch.randn(2, C, 5, 7)
    weights = ours.attention_weights(x)
    col, row = weights["column"], weights["row"]
    assert col.shape == (2, 5, 7, 5) and row.shape == (2, 5, 7, 7)
    assert torch.all(torch.diagonal(col, dim1=1, dim2=3) == 0)  # centre only in the row part
    torch.testing.assert_close(col.sum(-1) + row.sum(-1), torch.ones(2, 5, 7))
    _, att = dense_cca(ours, x)
    att = att.view(2, 5, 7, 5, 7)
    h_idx, w_idx = torch.arange(5), torch.arange(7)
    dense_col = att[:, h_idx[:, None, None], w_idx[None, :, None], h_idx[None, None, :], w_idx[None, :, None]]
    dense_row = att[:, h_idx[:, None, None], w_idx[None, :, None], h_idx[:, None, None], w_idx[None, None, :]]
    dense_col = dense_col.masked_fill(torch.eye(5, dtype=torch.bool)[:, None, :], 0)
    torch.testing.assert_close(col, dense_col, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(row, dense_row, rtol=1e-4, atol=1e-6)


def test_one_by_one_has_only_the_row_entry():
    ours, official = build(seed=4)
    x = torch.randn(2, C, 1, 1)
    weights = ours.attention_weights(x)
    assert torch.all(weights["column"] == 0) and torch.allclose(weights["row"], torch.ones(2, 1, 1, 1))
    with torch.no_grad():  # attends only to itself: y = x + gamma * v(x)
        v = ours.value_conv(x)
        torch.testing.assert_close(ours(x), x + ours.gamma * v)


@pytest.mark.parametrize("recurrence", [1, 2, 3])
def test_rcca_applies_the_shared_module(recurrence):
    official = randomize_(ccnet.CrissCrossAttention(C), 7)
    sd = official.state_dict()
    rcca = visattn.load_official(RecurrentCrissCrossAttention(C, recurrence=recurrence), {f"cca.{k}": v for k, v in sd.items()})
    assert sorted(rcca.state_dict()) == sorted(f"cca.{k}" for k in sd)
    x = torch.randn(2, C, 7, 13)
    with torch.no_grad():
        ref = x
        for _ in range(recurrence):
            ref = official(ref)
        assert rel_err(rcca(x), ref) < 1e-4


def test_rcca_reach():
    rcca = randomize_(RecurrentCrissCrossAttention(C, recurrence=2), 8)
    x = torch.randn(2, C, 5, 6)
    weights = rcca.attention_weights(x)
    assert set(weights) == {"column_1", "row_1", "column_2", "row_2", "reach"}
    reach = weights["reach"]
    assert reach.shape == (2, 5, 6, 5, 6) and bool((reach > 0).all())
    torch.testing.assert_close(reach.sum((-2, -1)), torch.ones(2, 5, 6))
    with torch.no_grad():  # the same product from the dense formulation, pass by pass
        _, a1 = dense_cca(rcca.cca, x)
        _, a2 = dense_cca(rcca.cca, rcca.cca(x))
    torch.testing.assert_close(reach.view(2, 30, 30), a2 @ a1, rtol=1e-4, atol=1e-6)

    single = RecurrentCrissCrossAttention(C, recurrence=1)
    single.load_state_dict(rcca.state_dict())
    reach1 = single.attention_weights(x)["reach"]
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(6), indexing="ij")
    cross = (rows[:, :, None, None] == rows) | (cols[:, :, None, None] == cols)  # (5, 6, 5, 6)
    assert bool((reach1[:, cross] > 0).all()) and bool((reach1[:, ~cross] == 0).all())
    torch.testing.assert_close(reach1.view(2, 30, 30), a1, rtol=1e-4, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        CrissCrossAttention(4, reduction=8)
    with pytest.raises(ValueError, match="recurrence"):
        RecurrentCrissCrossAttention(C, recurrence=0)
    assert "reduction=8" in repr(CrissCrossAttention(C)) and "recurrence=2" in repr(RecurrentCrissCrossAttention(C))
