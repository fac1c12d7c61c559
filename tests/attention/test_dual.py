"""DualAttention: parallel PAM + CAM, ``pam(x) + cam(x) - x`` with the same weights."""
from __future__ import annotations

import torch

import visattn
from helpers import randomize_, rel_err
from visattn.attention.dual import DualAttention

C = 16


def build(seed=0, **kwargs) -> DualAttention:
    return randomize_(DualAttention(C, **kwargs), seed)


def test_forward_is_sum_of_branches():
    m = build(chunk_size=7)
    x = torch.randn(2, C, 5, 9)
    with torch.no_grad():
        want = m.pam(x) + m.cam(x) - x
        assert rel_err(m(x), want) < 1e-5
        # and each branch actually contributes
        assert (m.pam(x) - x).abs().max() > 1e-2 and (m.cam(x) - x).abs().max() > 1e-2


def test_gradients_match_sum_of_branches():
    m = build(seed=1)
    x = torch.randn(2, C, 4, 6, requires_grad=True)
    weight = torch.randn(x.shape)

    def grads(f):
        x.grad = None
        m.zero_grad()
        (f(x) * weight).sum().backward()
        return {"x": x.grad, **{n: p.grad for n, p in m.named_parameters()}}

    got, want = grads(m), grads(lambda x: m.pam(x) + m.cam(x) - x)
    for name in got:
        if name != "pam.key_conv.bias":  # mathematically 0 (softmax ignores it): noise on both sides
            assert rel_err(got[name], want[name]) < 1e-4, name


def test_identity_at_initialisation_and_registry():
    m = visattn.create_attention("dual", C)
    assert isinstance(m, DualAttention)
    x = torch.randn(1, C, 4, 5)
    with torch.no_grad():
        assert torch.equal(m(x), x)


def test_attention_weights_merge_both_branches():
    m = build()
    x = torch.randn(2, C, 5, 6)
    weights = m.attention_weights(x, queries=[(1, 2)])
    assert set(weights) == {"position", "channel"}
    torch.testing.assert_close(weights["position"], m.pam.attention_weights(x, [(1, 2)])["position"])
    torch.testing.assert_close(weights["channel"], m.cam.attention_weights(x)["channel"])
    assert weights["position"].shape == (2, 1, 5, 6) and weights["channel"].shape == (2, C, C)
    assert m.attention_weights(x)["position"].shape == (2, 30, 5, 6)


def test_load_official_branch_checkpoints():
    gen = torch.Generator().manual_seed(4)
    d = C // 8
    shapes = {
        "pam.query_conv.weight": (d, C, 1, 1), "pam.query_conv.bias": (d,),
        "pam.key_conv.weight": (d, C, 1, 1), "pam.key_conv.bias": (d,),
        "pam.value_conv.weight": (C, C, 1, 1), "pam.value_conv.bias": (C,),
        "pam.gamma": (1,), "cam.gamma": (1,),
    }
    sd = {key: torch.randn(shape, generator=gen) * 0.5 for key, shape in shapes.items()}
    m = visattn.load_official(DualAttention(C), sd)
    pam = visattn.load_official(visattn.create_attention("pam", C), {k[4:]: v for k, v in sd.items() if k.startswith("pam.")})
    cam = visattn.load_official(visattn.create_attention("cam", C), {"gamma": sd["cam.gamma"]})
    x = torch.randn(2, C, 6, 7)
    with torch.no_grad():
        assert rel_err(m(x), pam(x) + cam(x) - x) < 1e-5
