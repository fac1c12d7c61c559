"""Residual attention modules start as the identity: a freshly built module leaves a network as it
was (what inserting one into a pretrained backbone relies on)."""
from __future__ import annotations

import pytest
import torch
from helpers import CHANNELS

import visattn

# Each module's output at initialisation: ``x`` where the residual branch is scaled by a zero gamma
# (PAM, CAM, CCA, RCCA, Dual) or ends in zero-initialised weights (Non-local's and DNL's
# ``conv_out``, GC's last transform conv); FLA is the identity before its output conv.
AT_INITIALISATION = {
    "cam": lambda m, x: x,
    "cca": lambda m, x: x,
    "dnl": lambda m, x: x,
    "dual": lambda m, x: x,
    "fla": lambda m, x: m.conv(x),
    "gc": lambda m, x: x,
    "nonlocal": lambda m, x: x,
    "pam": lambda m, x: x,
    "rcca": lambda m, x: x,
}


@pytest.mark.parametrize("name", sorted(AT_INITIALISATION))
@pytest.mark.parametrize("training", [False, True])
def test_identity_at_initialisation(name, training, device):
    m = visattn.create_attention(name, CHANNELS).to(device).train(training)
    x = torch.randn(2, CHANNELS, 4, 5, device=device)
    with torch.no_grad():
        assert torch.equal(m(x), AT_INITIALISATION[name](m, x))
