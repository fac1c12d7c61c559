"""ExternalAttention against an explicit formulation and the authors' External_attention (transcribed)."""
from __future__ import annotations

import pytest
import torch

import visattn
from helpers import assert_strongest_channel_maps, assert_gradients_close, gradients, match_reference, randomize_
from visattn._official.eanet import COUNTERPARTS, External_attention
from visattn.attention.external import ExternalAttention

C = 16


def reference(m: ExternalAttention, x: torch.Tensor) -> torch.Tensor:
    """``ReLU(x + BN(W_2 sum_k a~_kn V_k))``, ``a~`` softmax over positions then L1 over units (eval BN)."""
    p = {**dict(m.named_parameters()), **dict(m.named_buffers())}
    f = torch.einsum("oc,bchw->bohw", p["conv1.weight"][:, :, 0, 0], x) + p["conv1.bias"][:, None, None]
    a = torch.einsum("kc,bchw->bkhw", p["linear_0.weight"][:, :, 0], f)
    a = torch.softmax(a.flatten(2), -1).view_as(a)
    a = a / (1e-9 + a.sum(1, keepdim=True))
    y = torch.einsum("ck,bkhw->bchw", p["linear_1.weight"][:, :, 0], a)
    y = torch.einsum("oc,bchw->bohw", p["conv2.0.weight"][:, :, 0, 0], y)
    scale = p["conv2.1.weight"] / (p["conv2.1.running_var"] + 1e-5).sqrt()
    y = (y - p["conv2.1.running_mean"][:, None, None]) * scale[:, None, None] + p["conv2.1.bias"][:, None, None]
    return torch.relu(x + y)


def build(seed=0, **kwargs) -> ExternalAttention:
    return randomize_(ExternalAttention(C, **kwargs), seed).double().eval()


def test_forward_and_gradients_match_reference():
    m = build(units=6)
    got, want = match_reference(m, lambda x: reference(m, x), (2, C, 5, 7), rtol=1e-12)
    # conv1.bias shifts every softmax logit alike: its gradient is 0 up to rounding, hence a floor
    assert_gradients_close(got, want, rtol=1e-9, atol=1e-12 * max(g.abs().max() for g in want.values()))


@pytest.mark.parametrize("training", [False, True])
def test_matches_the_authors(training, device):
    m = build(seed=1).to(device).train(training)
    official = COUNTERPARTS["external"].build(m)
    assert isinstance(official, External_attention)
    x = torch.randn(2, C, 6, 9, dtype=torch.float64, device=device)
    weight = torch.randn(2, C, 6, 9, dtype=torch.float64, device=device)
    got, want = gradients(m, m, x, weight), gradients(official, official, x, weight)
    assert_gradients_close(got, want, rtol=1e-9, atol=1e-12 * max(g.abs().max() for g in want.values()))
    for key, value in official.state_dict().items():  # BN statistics moved alike
        torch.testing.assert_close(m.state_dict()[key], value, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="units=64"):
        COUNTERPARTS["external"].build(ExternalAttention(C, units=8))


def test_memory_weights_and_maps():
    m = build()
    x = torch.randn(1, C, 5, 7, dtype=torch.float64)
    memory = m.attention_weights(x)["memory"]
    assert memory.shape == (1, 64, 5, 7)
    torch.testing.assert_close(memory.sum(1), torch.ones(1, 5, 7, dtype=torch.float64))
    points = [(0, 0), (3, 6)]
    maps = assert_strongest_channel_maps(
        m, x, memory, points, "external", lambda k, p: f"External: memory unit {k}, the strongest at {p}"
    )
    assert [a.point for a in maps] == points


def test_authors_initialisation_and_keys():
    torch.manual_seed(0)
    m = ExternalAttention(256)
    assert sorted(m.state_dict()) == sorted(
        ["conv1.weight", "conv1.bias", "linear_0.weight", "linear_1.weight", "conv2.0.weight"]
        + [f"conv2.1.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    )
    assert torch.equal(m.linear_0.weight, m.linear_1.weight.permute(1, 0, 2))  # tied at initialisation
    assert m.linear_0.weight.data_ptr() != m.linear_1.weight.data_ptr()  # but two tensors
    for w in (m.conv1.weight, m.conv2[0].weight, m.linear_1.weight):  # normal(0, sqrt(2 / C))
        assert 0.95 < w.std() / (2 / 256) ** 0.5 < 1.05
    official = External_attention(256)  # the authors': one storage, drawn last at sqrt(2 / C)
    assert official.linear_1.weight.data_ptr() == official.linear_0.weight.data_ptr()
    assert 0.95 < official.linear_0.weight.std() / (2 / 256) ** 0.5 < 1.05


def test_bad_arguments_and_registration():
    with pytest.raises(ValueError, match="units"):
        ExternalAttention(16, units=0)
    assert visattn.create_attention("external", 32, units=8).extra_repr() == "channels=32, units=8"
