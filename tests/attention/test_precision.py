"""Every registered attention module under bf16 autocast, against its float32 computation.

A bf16 softmax of large scores keeps only a few bits of each weight, so the softmax mechanisms
run their softmax in float32 under autocast, forward and backward, and return those maps as
computed; outputs stay within 5% of float32.
"""
from __future__ import annotations

import pytest
import torch
from helpers import CHANNELS, SoftmaxDtypes, randomize_, rel_err

import visattn

NAMES = visattn.list_attentions()
# Mechanisms with a softmax; their softmax maps, returned in float32 under autocast.
SOFTMAX_MAPS = {
    "cam": {"channel"},
    "cca": {"column", "row"},
    "dnl": {"pairwise", "unary"},
    "dual": {"position", "channel"},
    "ema": {"responsibility"},
    "external": {"memory"},
    "fla": {"column", "row"},
    "gc": {"context"},
    "isa": {"long_range", "short_range"},
    "nonlocal": {"position"},
    "pam": {"position"},
    "psa": set(),  # the branch softmax, cast back to the features' dtype to weight them
    "rcca": {"column_1", "row_1", "column_2", "row_2"},
}
# Modules whose last op is a conv (FLA, ISA's out_conv) or that concatenate conv outputs (PSA):
# their output takes autocast's dtype; the others add or gate the float32 input and return float32.
OUTPUT_IN_AUTOCAST_DTYPE = {"fla", "isa", "psa"}


def build(name: str, device: torch.device) -> torch.nn.Module:
    return randomize_(visattn.create_attention(name, CHANNELS), seed=5).to(device)


def test_softmax_mechanisms_are_registered():
    assert set(SOFTMAX_MAPS) <= set(NAMES) and OUTPUT_IN_AUTOCAST_DTYPE <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_softmax_runs_in_float32(name, device):
    m = build(name, device).train()
    x = torch.randn(2, CHANNELS, 6, 8, device=device, requires_grad=True)
    with SoftmaxDtypes() as mode:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = m(x)
        y.sum().backward()
    assert mode.dtypes == ({torch.float32} if name in SOFTMAX_MAPS else set())
    assert y.dtype == (torch.bfloat16 if name in OUTPUT_IN_AUTOCAST_DTYPE else torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_attention_weights_close_to_float32(name, device):
    m = build(name, device).eval()
    x = torch.randn(1, CHANNELS, 6, 8, generator=torch.Generator().manual_seed(0)).to(device)
    want = m.attention_weights(x)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = m.attention_weights(x)
    assert got.keys() == want.keys() and SOFTMAX_MAPS.get(name, set()) <= set(got)
    for key, weights in got.items():
        if key in SOFTMAX_MAPS.get(name, ()):
            assert weights.dtype == torch.float32, key
        torch.testing.assert_close(weights.float(), want[key], rtol=0, atol=3e-2, msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_output_close_to_float32(name, device):
    m = build(name, device).eval()
    x = torch.randn(2, CHANNELS, 8, 10, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        want = m(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            got = m(x)
    assert torch.isfinite(got).all()
    assert rel_err(got.float(), want) < 0.05
