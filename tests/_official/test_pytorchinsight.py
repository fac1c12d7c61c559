"""The PytorchInsight transcription (``visattn._official.pytorchinsight``) against SGE's
equations, group by group."""
from __future__ import annotations

import torch
from helpers import randomize_, rel_err

from visattn._official.pytorchinsight import SpatialGroupEnhance


def test_sge_per_group(device):
    groups = 4
    m = randomize_(SpatialGroupEnhance(groups)).double().to(device)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64, device=device)
    out = []
    for g, xg in enumerate(x.chunk(groups, 1)):  # (B, C/G, H, W)
        s = (xg * xg.mean((2, 3), keepdim=True)).sum(1)  # (B, H, W)
        flat = s.flatten(1)
        s = ((flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-5)).view_as(s)  # unbiased std
        out.append(xg * torch.sigmoid(s * m.weight[0, g] + m.bias[0, g])[:, None])
    with torch.no_grad():
        assert rel_err(m(x), torch.cat(out, 1)) < 1e-12
