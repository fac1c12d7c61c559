"""The DANet transcription (``visattn._official.danet``) against the paper's equations in einsum."""
from __future__ import annotations

import torch
from helpers import randomize_, rel_err

from visattn._official.danet import CAM_Module, PAM_Module

C = 16


def conv1x1(layer: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C', N)``."""
    return torch.einsum("oc,bcn->bon", layer.weight[:, :, 0, 0], x.flatten(2)) + layer.bias[:, None]


def test_pam_is_softmax_over_all_positions(device):
    m = randomize_(PAM_Module(C)).double().to(device)
    x = torch.randn(2, C, 5, 7, dtype=torch.float64, device=device)
    q, k, v = conv1x1(m.query_conv, x), conv1x1(m.key_conv, x), conv1x1(m.value_conv, x)
    assert q.shape[1] == C // 8
    attention = torch.einsum("bci,bcj->bij", q, k).softmax(-1)  # no 1/sqrt(d)
    out = torch.einsum("bij,bcj->bci", attention, v).view_as(x)
    with torch.no_grad():
        assert rel_err(m(x), m.gamma * out + x) < 1e-12


def test_cam_is_softmax_of_rowmax_minus_energy(device):
    m = randomize_(CAM_Module(C)).double().to(device)
    x = torch.randn(2, C, 5, 7, dtype=torch.float64, device=device)
    a = x.flatten(2)
    energy = torch.einsum("bcn,bdn->bcd", a, a)
    attention = (energy.amax(-1, keepdim=True) - energy).softmax(-1)
    torch.testing.assert_close(attention, (-energy).softmax(-1))  # the same as softmax(-E)
    out = torch.einsum("bcd,bdn->bcn", attention, a).view_as(x)
    with torch.no_grad():
        assert rel_err(m(x), m.gamma * out + x) < 1e-12
