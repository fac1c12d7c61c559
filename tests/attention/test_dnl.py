"""DisentangledNonLocal2d against an explicit einsum/softmax formulation and mmseg's (transcribed)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import visattn
from helpers import LargestAllocation, assert_gradients_close, gradients, match_reference, randomize_
from visattn._official.mmseg import COUNTERPARTS, DisentangledNonLocal2d as OfficialDNL
from visattn.attention.dnl import DisentangledNonLocal2d

C = 16
H, W = 5, 7


def reference(m: DisentangledNonLocal2d, x: torch.Tensor) -> torch.Tensor:
    """Whitened pairwise softmax with temperature plus the unary softmax, the full N x N map (eval BN)."""
    p = {**dict(m.named_parameters()), **dict(m.named_buffers())}

    def conv1x1(prefix, a):
        y = torch.einsum("oc,bchw->bohw", p[f"{prefix}.weight"][:, :, 0, 0], a)
        return y if f"{prefix}.bias" not in p else y + p[f"{prefix}.bias"][:, None, None]

    theta, phi, g = (conv1x1(f"{b}.conv", x).flatten(2) for b in ("theta", "phi", "g"))
    theta, phi = theta - theta.mean(2, keepdim=True), phi - phi.mean(2, keepdim=True)
    scores = torch.einsum("bdi,bdj->bij", theta, phi) / m.temperature
    if m.use_scale:
        scores = scores / theta.shape[1] ** 0.5
    y = torch.einsum("bij,bdj->bdi", torch.softmax(scores, -1), g)
    unary = torch.softmax(conv1x1("conv_mask", x).flatten(1), -1)
    y = (y + torch.einsum("bj,bdj->bd", unary, g)[:, :, None]).reshape(x.shape[0], -1, *x.shape[2:])
    out = conv1x1("conv_out.conv", y)
    if m.norm_layer is not None:
        scale = p["conv_out.bn.weight"] / (p["conv_out.bn.running_var"] + 1e-5).sqrt()
        out = (out - p["conv_out.bn.running_mean"][:, None, None]) * scale[:, None, None] + p["conv_out.bn.bias"][:, None, None]
    return x + out


CONFIGS = [{}, {"use_scale": False, "temperature": 0.5}, {"norm_layer": nn.BatchNorm2d}]


def build(seed=0, **kwargs) -> DisentangledNonLocal2d:
    return randomize_(DisentangledNonLocal2d(C, **kwargs), seed).double().eval()


def floor(want) -> float:
    # phi's bias adds theta~_i . b to every score of row i and conv_mask's bias shifts every unary
    # logit: softmax ignores both, their gradients are 0 up to rounding
    return 1e-12 * max(g.abs().max() for g in want.values())


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("chunk_size", [4, None])
def test_forward_and_gradients_match_reference(kwargs, chunk_size):
    m = build(chunk_size=chunk_size, **kwargs)
    got, want = match_reference(m, lambda x: reference(m, x), (2, C, H, W), rtol=1e-10)
    assert_gradients_close(got, want, rtol=1e-9, atol=floor(want))


@pytest.mark.parametrize("training", [False, True])
def test_matches_mmseg(training, device):
    m = build(seed=2, norm_layer=nn.BatchNorm2d).to(device).train(training)
    official = COUNTERPARTS["dnl"].build(m)
    assert isinstance(official, OfficialDNL) and official.temperature == m.temperature
    x = torch.randn(2, C, H, W, dtype=torch.float64, device=device)
    weight = torch.randn(2, C, H, W, dtype=torch.float64, device=device)
    got, want = gradients(m, m, x, weight), gradients(official, official, x, weight)
    # mmseg divides by float32 tensors (sqrt(C') and the temperature): 1e-8 off in float64
    assert_gradients_close(got, want, rtol=1e-6, atol=1e-6 * max(g.abs().max() for g in want.values()))


def test_never_allocates_the_n_by_n_map(monkeypatch):
    monkeypatch.setattr(DisentangledNonLocal2d, "chunk_bytes", 2**20)
    m = randomize_(DisentangledNonLocal2d(C, norm_layer=nn.BatchNorm2d))
    x = torch.randn(1, C, 48, 48, requires_grad=True)  # the N x N map: 20 MiB
    with LargestAllocation() as mode:
        m(x).sum().backward()
    assert mode.max_bytes <= 2**20
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())
    with torch.no_grad(), LargestAllocation() as mode:  # the probe sees mmseg's map
        COUNTERPARTS["dnl"].build(m)(torch.randn(1, C, 24, 24))
    assert mode.max_bytes >= (24 * 24) ** 2 * 4


def test_attention_weights_and_maps():
    m = build()
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    weights = m.attention_weights(x)
    full = weights["pairwise"]
    assert full.shape == (1, H * W, H, W) and weights["unary"].shape == (1, H, W)
    torch.testing.assert_close(full.sum((2, 3)), torch.ones(1, H * W, dtype=torch.float64))
    # the unary term of the reference: softmax of conv_mask
    logits = torch.einsum("c,bchw->bhw", m.conv_mask.weight[0, :, 0, 0], x) + m.conv_mask.bias
    torch.testing.assert_close(weights["unary"], torch.softmax(logits.flatten(1), -1).view(1, H, W))
    points = [(0, 0), (3, 4)]
    maps = m.attention_maps(x, points)
    assert [a.key for a in maps] == ["dnl_q0", "dnl_q1", "dnl_unary"]
    for amap, (r, c) in zip(maps, points):
        torch.testing.assert_close(torch.from_numpy(amap.values).double(), full[0, r * W + c], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(torch.from_numpy(maps[-1].values).double(), weights["unary"][0], rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="outside"):
        m.attention_weights(x, [(H, 0)])


def test_keys_identity_and_arguments():
    m = DisentangledNonLocal2d(C, norm_layer=nn.BatchNorm2d)
    assert sorted(m.state_dict()) == sorted(
        [f"{b}.conv.{p}" for b in ("g", "theta", "phi") for p in ("weight", "bias")]
        + ["conv_out.conv.weight", "conv_mask.weight", "conv_mask.bias"]
        + [f"conv_out.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    )
    x = torch.randn(2, C, 4, 5)
    with torch.no_grad():
        assert torch.equal(m(x), x)
    with pytest.raises(ValueError, match="temperature"):
        DisentangledNonLocal2d(C, temperature=0)
    assert visattn.create_attention("dnl", 32, temperature=0.1).extra_repr() == (
        "channels=32, reduction=2, use_scale=True, temperature=0.1, chunk_size=None"
    )
