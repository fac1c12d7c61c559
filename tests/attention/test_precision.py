"""Every registered attention module under bf16 autocast, against its float32 computation.

A bf16 softmax of large scores keeps only a few bits of each weight, so the softmax mechanisms
run their softmax in float32 under autocast, forward and backward, and return those maps as
computed; outputs stay within 5% of float32. Which modules have a softmax, which weights come back
in float32 and which outputs take autocast's dtype are each class's traits.
"""
from __future__ import annotations

import pytest
import torch
from helpers import CHANNELS, SoftmaxDtypes, randomize_, rel_err

import visattn
from visattn.attention import attention_traits


def build(name: str, device: torch.device) -> torch.nn.Module:
    return randomize_(visattn.create_attention(name, CHANNELS), seed=5).to(device)


def registered_names() -> list[str]:
    return visattn.list_attentions()


@pytest.mark.parametrize("name", registered_names())
def test_softmax_runs_in_float32(name, device):
    m = build(name, device).train()
    x = torch.randn(2, CHANNELS, 6, 8, device=device, requires_grad=True)
    with SoftmaxDtypes() as mode:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = m(x)
        y.sum().backward()
    traits = attention_traits(name)
    assert mode.dtypes == ({torch.float32} if traits.has_softmax else set())
    assert y.dtype == (torch.bfloat16 if traits.output_in_autocast_dtype else torch.float32)


@pytest.mark.parametrize("name", registered_names())
def test_attention_weights_close_to_float32(name, device):
    m = build(name, device).eval()
    x = torch.randn(1, CHANNELS, 6, 8, generator=torch.Generator().manual_seed(0)).to(device)
    want = m.attention_weights(x)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = m.attention_weights(x)
    float32_weights = attention_traits(name).float32_weights
    assert got.keys() == want.keys() and set(float32_weights) <= set(got)
    for key, weights in got.items():
        if key in float32_weights:
            assert weights.dtype == torch.float32, key
        torch.testing.assert_close(weights.float(), want[key], rtol=0, atol=3e-2, msg=key)


@pytest.mark.parametrize("name", registered_names())
def test_output_close_to_float32(name, device):
    m = build(name, device).eval()
    x = torch.randn(2, CHANNELS, 8, 10, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        want = m(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            got = m(x)
    assert torch.isfinite(got).all()
    assert rel_err(got.float(), want) < 0.05


def test_a_registered_module_is_covered_by_its_traits(throwaway):
    assert throwaway in registered_names()
    cpu = torch.device("cpu")
    test_softmax_runs_in_float32(throwaway, cpu)
    test_attention_weights_close_to_float32(throwaway, cpu)
    test_output_close_to_float32(throwaway, cpu)
