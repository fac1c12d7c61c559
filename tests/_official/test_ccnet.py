"""The CCNet transcription (``visattn._official.ccnet``) against an explicit loop over positions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import randomize_, rel_err

from visattn._official.ccnet import CrissCrossAttention, InPlaceABNSync

C = 16


def test_cca_attends_to_its_row_and_column_with_the_centre_once(device):
    m = randomize_(CrissCrossAttention(C)).double().to(device)
    x = torch.randn(2, C, 3, 4, dtype=torch.float64, device=device)
    b, _, h, w = x.shape
    q, k, v = m.query_conv(x), m.key_conv(x), m.value_conv(x)
    out = torch.zeros_like(x)
    for i in range(b):
        for r in range(h):
            for c in range(w):
                keys = [(r2, c) for r2 in range(h) if r2 != r] + [(r, c2) for c2 in range(w)]
                scores = torch.stack([q[i, :, r, c] @ k[i, :, r2, c2] for r2, c2 in keys])
                weights = scores.softmax(0)
                out[i, :, r, c] = sum(wt * v[i, :, r2, c2] for wt, (r2, c2) in zip(weights, keys))
    with torch.no_grad():
        assert rel_err(m(x), m.gamma * out + x) < 1e-12


def test_inplace_abn_at_inference(device):
    for activation in ("leaky_relu", "none"):
        m = randomize_(InPlaceABNSync(C, activation)).double().to(device)
        with torch.no_grad():
            m.weight[::2].neg_()  # InPlace-ABN uses |weight|
        x = torch.randn(2, C, 3, 4, dtype=torch.float64, device=device)
        scale = (m.weight.abs() + m.eps)[:, None, None]
        y = (x - m.running_mean[:, None, None]) / (m.running_var[:, None, None] + m.eps).sqrt() * scale + m.bias[:, None, None]
        with torch.no_grad():
            torch.testing.assert_close(m(x), F.leaky_relu(y, 0.01) if activation == "leaky_relu" else y)
