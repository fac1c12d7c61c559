"""SGE against explicit loops and the official (PytorchInsight) formulation."""
from __future__ import annotations

import pytest
import torch

import visattn
from helpers import randomize_
from visattn.attention.sge import SpatialGroupEnhance

C, G = 64, 8


def loop_reference(x, weight, bias, groups):
    """Per item and group: score each position, normalise over positions, gate the group."""
    b, c, h, w = x.shape
    cg = c // groups
    y = torch.empty_like(x)
    for i in range(b):
        for g in range(groups):
            xs = x[i, g * cg : (g + 1) * cg]  # (C/G, H, W)
            s = torch.zeros(h, w, dtype=x.dtype)
            for k in range(cg):
                s += xs[k] * xs[k].mean()
            s = (s - s.mean()) / (s.std() + 1e-5)  # unbiased std
            gate = torch.sigmoid(s * weight[0, g, 0, 0] + bias[0, g, 0, 0])
            y[i, g * cg : (g + 1) * cg] = xs * gate
    return y


def official_reference(x, weight, bias, groups):
    """The official forward: fold groups into the batch, view-based normalisation."""
    b, c, h, w = x.shape
    xf = x.view(b * groups, -1, h, w)
    t = (xf * xf.mean((2, 3), keepdim=True)).sum(1, keepdim=True).view(b * groups, -1)
    t = t - t.mean(1, keepdim=True)
    t = t / (t.std(1, keepdim=True) + 1e-5)
    t = t.view(b, groups, h, w) * weight + bias
    return (xf * torch.sigmoid(t.view(b * groups, 1, h, w))).view(b, c, h, w)


def build(seed=0):
    return randomize_(SpatialGroupEnhance(C, groups=G), seed).eval()


@pytest.mark.parametrize("size", [(2, 2), (7, 13), (33, 47), (1, 5)])
def test_matches_loops_and_official(size):
    m = build()
    x = torch.randn(2, C, *size, dtype=torch.float64)
    m = m.double()
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y, loop_reference(x, m.weight, m.bias, G))
        torch.testing.assert_close(y, official_reference(x, m.weight, m.bias, G))


@pytest.mark.filterwarnings("ignore:std\\(\\)")
def test_one_by_one_is_finite_where_official_is_nan():
    m = build(1)
    x = torch.randn(3, C, 1, 1, requires_grad=True)
    with torch.no_grad():
        assert torch.isnan(official_reference(x, m.weight, m.bias, G)).all()
    y = m(x)
    # Normalised score 0: the gate is sigmoid(bias) per group.
    expected = x.view(3, G, C // G, 1, 1) * torch.sigmoid(m.bias)[:, :, None]
    torch.testing.assert_close(y, expected.view(3, C, 1, 1))
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_gradcheck_one_by_one():
    m = build(2).double()
    x = torch.randn(2, C, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_constant_map_has_finite_gradients():
    # torch.std's backward is NaN at zero spread; the floored std keeps training finite.
    m = build(2)
    x = torch.randn(1, C, 1, 1).expand(1, C, 3, 2).contiguous().requires_grad_()
    m(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_initialisation_and_official_keys():
    m = SpatialGroupEnhance(C, groups=G)
    assert set(m.state_dict()) == {"weight", "bias"}
    assert m.weight.shape == m.bias.shape == (1, G, 1, 1)
    assert (m.weight == 0).all() and (m.bias == 1).all()
    x = torch.randn(1, C, 4, 5)
    torch.testing.assert_close(m(x), x * torch.sigmoid(torch.tensor(1.0)))


def test_load_official():
    gen = torch.Generator().manual_seed(3)
    sd = {"module.weight": torch.randn(1, G, 1, 1, generator=gen), "module.bias": torch.randn(1, G, 1, 1, generator=gen)}
    m = visattn.load_official(SpatialGroupEnhance(C, groups=G), sd)
    x = torch.randn(2, C, 6, 9)
    with torch.no_grad():
        torch.testing.assert_close(m(x), official_reference(x, sd["module.weight"], sd["module.bias"], G))


def test_attention_weights():
    m = build(4)
    x = torch.randn(2, C, 5, 7)
    gate = m.attention_weights(x)["gate"]
    assert gate.shape == (2, G, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * gate.repeat_interleave(C // G, dim=1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="groups=7"):
        SpatialGroupEnhance(C, groups=7)
    with pytest.raises(ValueError, match="groups"):
        SpatialGroupEnhance(C, groups=0)
