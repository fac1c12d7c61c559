"""EMAUnit against the EM iterations written out and mmseg's EMAModule (transcribed)."""
from __future__ import annotations

import pytest
import torch

import visattn
from helpers import assert_strongest_channel_maps, gradients, match_reference, randomize_, rel_err
from visattn._official.mmseg import COUNTERPARTS, EMAUnit as OfficialEMAUnit
from visattn.attention.ema import EMAUnit

C, K = 12, 5
H, W = 5, 7


def em(m: EMAUnit, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Responsibilities ``z`` ``(B, N, K)`` and bases ``(B, C, K)``: E- and M-steps with explicit sums, per image."""
    w, b = m.ema_mid_conv.conv.weight[:, :, 0, 0], m.ema_mid_conv.conv.bias
    f = (torch.einsum("oc,bchw->bohw", w, x) + b[:, None, None]).flatten(2)
    zs, mus = [], []
    for fi in f:  # (C, N)
        mu = m.bases[0]
        for _ in range(m.num_stages):
            z = torch.exp(fi.T @ mu)
            z = z / z.sum(1, keepdim=True)  # softmax over the bases
            mu = (fi @ z) / z.sum(0)  # each base: the responsibility-weighted mean of the features
            mu = mu / mu.square().sum(0).sqrt()
        zs.append(z)
        mus.append(mu)
    return torch.stack(zs), torch.stack(mus)


def reference(m: EMAUnit, x: torch.Tensor) -> torch.Tensor:
    """``ReLU(x + BN(W_out ReLU(mu z^T)))`` with the rebuilt features held constant (eval BN)."""
    z, mu = em(m, x)
    recon = torch.relu(mu @ z.transpose(1, 2)).detach().reshape(x.shape)
    bn = m.ema_out_conv.bn
    y = torch.einsum("oc,bchw->bohw", m.ema_out_conv.conv.weight[:, :, 0, 0], recon)
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return torch.relu(x + (y - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None])


def build(seed=0, **kwargs) -> EMAUnit:
    m = randomize_(EMAUnit(C, num_bases=K, **kwargs), seed).double().eval()
    return m


def test_forward_and_gradients_match_reference():
    m = build()
    got, want = match_reference(m, lambda x: reference(m, x), (2, C, H, W), rtol=1e-10)
    assert got["ema_mid_conv.conv.weight"] is None and got["ema_mid_conv.conv.bias"] is None  # frozen
    for name, g in got.items():
        if g is not None:
            assert rel_err(g, want[name]) < 1e-10, name


def test_training_moves_the_bases_as_a_moving_average():
    m = build(momentum=0.3).train()
    x = torch.randn(3, C, H, W, dtype=torch.float64)
    old = m.bases.clone()
    _, mu = em(m, x)
    new = mu.mean(0, keepdim=True)
    new = new / new.square().sum(1, keepdim=True).sqrt()
    with torch.no_grad():
        m(x)
    torch.testing.assert_close(m.bases, 0.7 * old + 0.3 * new, rtol=1e-12, atol=1e-14)
    bases = m.bases.clone()
    with torch.no_grad():
        m.eval()(x)
        m.train()(x[:0])  # an empty batch leaves them
    assert torch.equal(m.bases, bases)


@pytest.mark.parametrize("training", [False, True])
def test_matches_mmseg(training, device):
    m = build(seed=1).to(device).train(training)
    official = COUNTERPARTS["ema"].build(m)
    assert isinstance(official, OfficialEMAUnit)
    x = torch.randn(2, C, H, W, dtype=torch.float64, device=device)
    weight = torch.randn(2, C, H, W, dtype=torch.float64, device=device)
    got, want = gradients(m, m, x, weight), gradients(official, official, x, weight)
    for name, g in got.items():
        assert (g is None) == (want[name] is None), name
        if g is not None:
            assert rel_err(g, want[name]) < 1e-10, name
    torch.testing.assert_close(m.bases, official.ema_module.bases, rtol=1e-12, atol=1e-14)


def test_responsibilities_and_maps():
    m = build()
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    resp = m.attention_weights(x)["responsibility"]
    z, _ = em(m, x)
    torch.testing.assert_close(resp, z.transpose(1, 2).reshape(1, K, H, W))
    bases = m.bases.clone()
    m.train().attention_weights(x)
    assert torch.equal(m.bases, bases)  # pictures do not train
    assert_strongest_channel_maps(
        m, x, resp, [(0, 0), (4, 6)], "ema", lambda k, p: f"EMA: base {k}, the most responsible for {p}"
    )


def test_initialisation_keys_and_arguments():
    torch.manual_seed(0)
    m = EMAUnit(512)
    assert sorted(m.state_dict()) == sorted(
        ["bases", "ema_mid_conv.conv.weight", "ema_mid_conv.conv.bias", "ema_out_conv.conv.weight"]
        + [f"ema_out_conv.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    )
    assert m.bases.shape == (1, 512, 64)
    torch.testing.assert_close(m.bases.square().sum(1), torch.ones(1, 64))  # unit bases
    assert not any(p.requires_grad for p in m.ema_mid_conv.parameters())
    assert 0.95 < m.ema_mid_conv.conv.weight.std() / (2 / 512) ** 0.5 < 1.05  # Kaiming-normal, fan-out
    for bad in ({"num_bases": 0}, {"num_stages": 0}, {"momentum": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EMAUnit(16, **bad)
    assert visattn.create_attention("ema", 32, num_bases=8).extra_repr() == (
        "channels=32, num_bases=8, num_stages=3, momentum=0.1"
    )
