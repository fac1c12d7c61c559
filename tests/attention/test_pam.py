"""PositionAttention (DANet PAM) against an explicit einsum/softmax formulation."""
from __future__ import annotations

import pytest
import torch

from helpers import LargestAllocation, assert_gradients_close, gradients, randomize_, rel_err
from visattn.attention import _functional
from visattn.attention._functional import softmax_attention
from visattn.attention.pam import PositionAttention

C = 16


def reference(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """DANet PAM written out: 1x1 convs as einsums, the full N x N softmax, no scaling."""
    b, c, h, w = x.shape
    a = x.reshape(b, c, h * w)

    def conv1x1(name):
        return torch.einsum("oc,bcn->bon", sd[f"{name}.weight"][:, :, 0, 0], a) + sd[f"{name}.bias"][None, :, None]

    q, k, v = conv1x1("query_conv"), conv1x1("key_conv"), conv1x1("value_conv")
    attn = torch.softmax(torch.einsum("bdi,bdj->bij", q, k), dim=-1)  # (B, N_query, N_key)
    out = torch.einsum("bij,bcj->bci", attn, v)
    return sd["gamma"] * out.reshape(b, c, h, w) + x


def build(chunk_size=None, dtype=torch.float32, seed=0) -> PositionAttention:
    return randomize_(PositionAttention(C, chunk_size=chunk_size), seed).to(dtype)


def params(m) -> dict[str, torch.Tensor]:
    return dict(m.named_parameters())


# N = 5 * 9 = 45: chunks of 1, 7 (not dividing N), 16, 45 (one chunk), 64 (> N) and automatic.
CHUNKS = [1, 7, 16, 45, 64, None]


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(chunk_size, dtype):
    m = build(chunk_size, dtype)
    x = torch.randn(2, C, 5, 9, dtype=dtype)
    with torch.no_grad():
        assert rel_err(m(x), reference(params(m), x)) < (1e-4 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_match_reference(chunk_size, dtype):
    m = build(chunk_size, dtype, seed=1)
    x = torch.randn(2, C, 5, 9, dtype=dtype)
    weight = torch.randn(2, C, 5, 9, dtype=dtype)  # a generic upstream gradient
    got = gradients(m, m, x, weight)
    want = gradients(lambda x: reference(params(m), x), m, x, weight)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    # The key bias adds q_i . b_k to every score of row i: softmax ignores it, its gradient is 0.
    scale = want["key_conv.weight"].abs().max()
    assert got["key_conv.bias"].abs().max() < tol * scale
    for name in got:
        if name != "key_conv.bias":
            assert rel_err(got[name], want[name]) < tol, name


def test_never_allocates_the_n_by_n_map(monkeypatch):
    monkeypatch.setattr(_functional, "CHUNK_BYTES", 2**20)  # the automatic chunk size must respect it
    m = build()
    x = torch.randn(1, C, 64, 64, requires_grad=True)
    n = 64 * 64  # the N x N map would take 64 MiB
    with LargestAllocation() as mode:
        m(x).sum().backward()
    assert mode.max_bytes <= 2**20 == n * n * 4 / 64
    chunks = -(-n // (2**20 // (4 * n)))
    softmaxes = mode.calls["_softmax"] + mode.calls["softmax"]  # backward writes into a reused buffer
    assert softmaxes == 2 * chunks  # backward was recorded: it recomputes each chunk
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())


def test_allocation_probe_sees_the_naive_map():
    m = build()
    x = torch.randn(1, C, 24, 24)
    with torch.no_grad(), LargestAllocation() as mode:
        reference(params(m), x)
    assert mode.max_bytes >= (24 * 24) ** 2 * 4


def test_softmax_is_fp32_under_bf16_autocast():
    q, k = torch.randn(2, 30, 4) * 3, torch.randn(2, 30, 4) * 3
    v = torch.randn(2, 8, 30)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = softmax_attention(q, k, v, chunk_size=7)
    want = torch.softmax(q.double() @ k.double().transpose(1, 2), -1) @ v.double().transpose(1, 2)
    assert out.dtype == torch.bfloat16
    # Only the final rounding to bf16 (2^-8 relative); a bf16 softmax of these scores is ~10x off.
    assert rel_err(out.transpose(1, 2), want) < 2**-8


def test_bf16_autocast_training_close_to_fp32():
    m = build(chunk_size=7)
    x = torch.randn(2, C, 5, 9)
    got, want = gradients(m, m, x, autocast=torch.bfloat16), gradients(m, m, x)
    assert rel_err(got["input"], want["input"]) < 0.05


def test_compiled_training_matches_eager():
    m = build(chunk_size=20)  # 3 chunks, the last one partial
    x = torch.randn(2, C, 5, 9)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    want = gradients(lambda t: m(t).square(), m, x)
    assert_gradients_close(gradients(lambda t: compiled(t).square(), m, x), want, rtol=1e-4, atol=1e-6)


def test_attention_weights_are_the_reference_rows():
    m = build()
    x = torch.randn(2, C, 5, 9)
    sd = params(m)
    a = x.flatten(2)
    q = torch.einsum("oc,bcn->bon", sd["query_conv.weight"][:, :, 0, 0], a) + sd["query_conv.bias"][None, :, None]
    k = torch.einsum("oc,bcn->bon", sd["key_conv.weight"][:, :, 0, 0], a) + sd["key_conv.bias"][None, :, None]
    attn = torch.softmax(torch.einsum("bdi,bdj->bij", q, k), dim=-1).detach()  # (B, N, N)

    queries = [(0, 0), (2, 5), (4, 8)]
    rows = m.attention_weights(x, queries)["position"]
    assert rows.shape == (2, 3, 5, 9) and not rows.requires_grad
    torch.testing.assert_close(rows.sum((2, 3)), torch.ones(2, 3))
    torch.testing.assert_close(rows.flatten(2), attn[:, [0, 2 * 9 + 5, 4 * 9 + 8]], rtol=1e-4, atol=1e-6)

    full = m.attention_weights(x)["position"]
    assert full.shape == (2, 45, 5, 9)
    torch.testing.assert_close(full.flatten(2), attn, rtol=1e-4, atol=1e-6)

    with pytest.raises(ValueError, match="outside"):
        m.attention_weights(x, [(5, 0)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduction=32"):
        PositionAttention(16, reduction=32)
    with pytest.raises(ValueError, match="chunk_size"):
        PositionAttention(16, chunk_size=0)


@pytest.mark.parametrize("chunk_size", [7, None])
def test_fused_residual_equals_unfused(chunk_size):
    # The module's forward fuses ``x + gamma * out``; ``attend`` (used by the dual block) does not.
    m = build(chunk_size, torch.float64, seed=2)
    x = torch.randn(2, C, 5, 9, dtype=torch.float64)
    weight = torch.randn(2, C, 5, 9, dtype=torch.float64)
    unfused = gradients(lambda t: m.gamma * m.attend(t) + t, m, x, weight)
    assert_gradients_close(gradients(m, m, x, weight), unfused, rtol=1e-10, atol=1e-12)


def test_position_attention_needs_gamma_with_residual():
    q, k, v = torch.randn(1, 6, 2), torch.randn(1, 6, 2), torch.randn(1, 4, 6)
    with pytest.raises(ValueError, match="gamma and residual"):
        softmax_attention(q, k, v, gamma=torch.ones(1))
