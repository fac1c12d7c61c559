"""The FLANet transcription (``visattn._official.flanet``) against a loop over columns and rows,
with the pairing of its ``repeat``: item ``b``'s column ``w`` uses the context of item
``(b * W + w) % B`` (rows: ``(b * H + h) % B``)."""
from __future__ import annotations

import pytest
import torch
from helpers import randomize_, rel_err

from visattn._official.flanet import FullyAttentionalBlock

C = 8


def loop_fla(m: FullyAttentionalBlock, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    ctx_h = m.conv1(x.mean(3).transpose(1, 2))  # (B, H, C)
    ctx_w = m.conv2(x.mean(2).transpose(1, 2))  # (B, W, C)
    out = torch.zeros_like(x)
    for i in range(b):
        for col in range(w):
            feat = x[i, :, :, col]  # (C, H)
            out[i, :, :, col] += torch.softmax(feat @ ctx_h[(i * w + col) % b], -1) @ feat
        for row in range(h):
            feat = x[i, :, row, :]  # (C, W)
            out[i, :, row, :] += torch.softmax(feat @ ctx_w[(i * h + row) % b], -1) @ feat
    return m.conv(m.gamma * out + x)


@pytest.mark.parametrize("batch", [1, 3])
def test_fla_mixes_items_as_its_repeat_pairs_them(batch, device):
    m = randomize_(FullyAttentionalBlock(C)).double().eval().to(device)
    x = torch.randn(batch, C, 4, 5, dtype=torch.float64, device=device) * torch.arange(1, batch + 1, device=device).view(-1, 1, 1, 1)
    with torch.no_grad():
        y = m(x)
        assert rel_err(y, loop_fla(m, x)) < 1e-12
        if batch > 1:  # item 0 alone differs: the other items' contexts leaked into it
            assert rel_err(y[:1], m(x[:1])) > 1e-3
