"""ChannelAttention (DANet CAM) against the official formula and softmax(-E), written out."""
from __future__ import annotations

import pytest
import torch

from helpers import gradients, randomize_, rel_err
from visattn.attention.cam import ChannelAttention, flush_subnormal

C = 32
TINY = torch.finfo(torch.float32).tiny


def reference_official(gamma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The official CAM_Module: softmax(rowmax(E) - E) with E = A A^T."""
    b, c, h, w = x.shape
    a = x.reshape(b, c, -1)
    energy = torch.bmm(a, a.permute(0, 2, 1))
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    out = torch.bmm(torch.softmax(energy_new, dim=-1), a).view(b, c, h, w)
    return gamma * out + x


def reference_negated(gamma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The same function as softmax(-E), with the softmax spelled out."""
    a = x.flatten(2)
    energy = torch.einsum("bcn,bdn->bcd", a, a)
    logits = -energy - (-energy).amax(-1, keepdim=True)
    attn = logits.exp() / logits.exp().sum(-1, keepdim=True)
    return gamma * torch.einsum("bcd,bdn->bcn", attn, a).reshape(x.shape) + x


def build(dtype=torch.float32, seed=0) -> ChannelAttention:
    return randomize_(ChannelAttention(C), seed).to(dtype)


@pytest.mark.parametrize("reference", [reference_official, reference_negated])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (12, 16)])
def test_forward_matches_reference(reference, size):
    m = build()
    x = torch.randn(2, C, *size)
    with torch.no_grad():
        assert rel_err(m(x), reference(m.gamma, x)) < 1e-4
        x64 = x.double()
        assert rel_err(build(torch.float64)(x64), reference(m.gamma.double(), x64)) < 1e-10


def test_attends_to_least_similar_channel():
    # Channel 0 is the negation of channel 1: the least similar one, so it takes all the weight.
    x = torch.randn(1, C, 6, 6)
    x[0, 1] = -x[0, 0] * 3
    attn = ChannelAttention(C).attention_weights(x)["channel"]
    assert attn[0, 0].argmax() == 1 and attn[0, 0, 1] > 0.99


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_match_reference(dtype):
    m = build(dtype, seed=1)
    x = torch.randn(2, C, 5, 7, dtype=dtype)
    weight = torch.randn(x.shape, dtype=dtype)
    got = gradients(m, m, x, weight)
    want = gradients(lambda x: reference_official(m.gamma, x), m, x, weight)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert got.keys() == {"input", "gamma"}
    for name in got:
        assert rel_err(got[name], want[name]) < tol, name


def test_bf16_autocast_keeps_energy_in_fp32():
    m = build()
    x = torch.randn(2, C, 16, 16)  # energies ~256: bf16 cannot resolve their differences
    with torch.no_grad():
        want = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = m(x)
        assert rel_err(got, want) < 1e-2
        # A bf16 module: computed in fp32 on the same values, returned in bf16.
        m16, xb = m.bfloat16(), x.bfloat16()
        got_bf16 = m16(xb)
        assert got_bf16.dtype == torch.bfloat16
        assert rel_err(got_bf16, reference_official(m16.gamma.float(), xb.float())) < 1e-2


def test_training_under_bf16_autocast_close_to_fp32():
    m = build()
    x = torch.randn(2, C, 8, 8)
    got, want = gradients(m, m, x, autocast=torch.bfloat16), gradients(m, m, x)
    assert rel_err(got["input"], want["input"]) < 1e-2


def test_subnormals_flushed_without_changing_results():
    m = build()
    # Energies ~N * var: softmax rows are so peaked that some entries are subnormal.
    x = 1.5 * torch.randn(1, C, 16, 16, generator=torch.Generator().manual_seed(0))
    a = x.flatten(2)
    raw = torch.softmax(-(a @ a.transpose(1, 2)), -1)
    assert ((raw > 0) & (raw < TINY)).any()  # the case the flush is for
    attn = m.attention_weights(x)["channel"]
    assert not ((attn > 0) & (attn < TINY)).any()
    torch.testing.assert_close(attn, raw, rtol=0, atol=TINY)

    x.requires_grad_(True)
    weight = torch.randn(x.shape)
    (m(x) * weight).sum().backward()
    got = x.grad.clone()
    x.grad = None
    (reference_official(m.gamma, x) * weight).sum().backward()
    assert rel_err(got, x.grad) < 1e-4


def test_flush_subnormal_value_and_gradient():
    t = torch.tensor([1.0, TINY, TINY / 4, -TINY / 2, 0.0, -2.0], requires_grad=True)
    y = flush_subnormal(t)
    assert y.tolist() == [1.0, TINY, 0.0, 0.0, 0.0, -2.0]
    y.backward(torch.tensor([TINY / 8, 1.0, 2.0, 3.0, 4.0, TINY]))
    assert t.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, TINY]


def test_attention_weights_are_the_official_softmax():
    m = build()
    x = torch.randn(2, C, 5, 6)
    attn = m.attention_weights(x)["channel"]
    assert attn.shape == (2, C, C) and not attn.requires_grad
    a = x.flatten(2)
    energy = a @ a.transpose(1, 2)
    want = torch.softmax(energy.amax(-1, keepdim=True) - energy, -1)
    torch.testing.assert_close(attn, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, C))


def test_bad_channels():
    with pytest.raises(ValueError, match="channels"):
        ChannelAttention(0)
