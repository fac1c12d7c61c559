"""The EPSANet transcription (``visattn._official.epsanet``) against PSA's equations: one shared
SE weight per branch, a softmax across branches, the branches concatenated in reverse order."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import randomize_, rel_err

from visattn._official.epsanet import PSAModule


def test_psa_concatenates_branches_in_reverse(device):
    m = randomize_(PSAModule(32, 64, stride=2)).double().to(device)
    x = torch.randn(2, 32, 9, 10, dtype=torch.float64, device=device)
    branches, logits = [], []
    for i, (k, g) in enumerate(zip((3, 5, 7, 9), (1, 4, 8, 16)), 1):
        f = F.conv2d(x, getattr(m, f"conv_{i}").weight, stride=2, padding=k // 2, groups=g)
        se = F.conv2d(F.relu(F.conv2d(f.mean((2, 3), keepdim=True), m.se.fc1.weight, m.se.fc1.bias)), m.se.fc2.weight, m.se.fc2.bias)
        branches.append(f)
        logits.append(torch.sigmoid(se))
    weights = torch.stack(logits).softmax(0)  # across the four branches
    expected = torch.cat([weights[i] * branches[i] for i in (3, 2, 1, 0)], 1)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 64, 5, 5)
    assert rel_err(y, expected) < 1e-12
