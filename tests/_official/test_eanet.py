"""The authors' External_attention, transcribed, against external attention computed position by position."""
from __future__ import annotations

import torch

from helpers import randomize_, rel_err
from visattn._official.eanet import COUNTERPARTS, External_attention
from visattn.attention.external import ExternalAttention

C = 16


def test_transcription_position_by_position():
    m = randomize_(External_attention(C)).double().eval()
    x = torch.randn(2, C, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        f = m.conv1(x).flatten(2)  # (B, C, N)
        memory_in, memory_out = m.linear_0.weight[:, :, 0], m.linear_1.weight[:, :, 0]  # (K, C), (C, K)
        scores = torch.stack([memory_in @ f[:, :, n].T for n in range(12)], -1)  # (K, B, N)
        attn = torch.softmax(scores, -1)  # over positions
        attn = attn / (1e-9 + attn.sum(0, keepdim=True))  # over memory units
        y = torch.stack([(memory_out @ attn[:, :, n]).T for n in range(12)], -1).reshape(2, C, 3, 4)
        assert rel_err(m(x), torch.relu(x + m.conv2(y))) < 1e-12


def test_memories_share_one_storage_and_the_counterpart_separates_them():
    official = External_attention(C)
    assert official.linear_1.weight.data_ptr() == official.linear_0.weight.data_ptr()
    assert torch.equal(official.linear_1.weight, official.linear_0.weight.permute(1, 0, 2))
    m = randomize_(ExternalAttention(C))  # untied by randomize_: the counterpart must keep both
    built = COUNTERPARTS["external"].build(m)
    torch.testing.assert_close(built.linear_0.weight, m.linear_0.weight, rtol=0, atol=0)
    torch.testing.assert_close(built.linear_1.weight, m.linear_1.weight, rtol=0, atol=0)
    assert sorted(built.state_dict()) == sorted(m.state_dict())
