"""mmcv's NonLocal2d, transcribed, against the embedded Gaussian block computed one query at a time."""
from __future__ import annotations

import pytest
import torch

from helpers import randomize_, rel_err
from visattn._official.mmcv import COUNTERPARTS, NonLocal2d
from visattn.attention.non_local import NonLocal2d as VisattnNonLocal2d

C = 12


def row_by_row(m: NonLocal2d, x: torch.Tensor) -> torch.Tensor:
    """``z_i = x_i + conv_out(sum_j softmax_j(theta_i . phi_j / sqrt(C')) g_j)``, one query row at a time."""
    theta, phi, g = (branch(x) for branch in (m.theta, m.phi, m.g))  # sub_sample pools phi and g
    b, d, h, w = theta.shape
    theta, phi, g = theta.flatten(2), phi.flatten(2), g.flatten(2)
    y = torch.empty_like(theta)
    for i in range(h * w):
        scores = (theta[:, :, i : i + 1] * phi).sum(1)  # (B, M)
        if m.use_scale:
            scores = scores / d**0.5
        y[:, :, i] = (torch.softmax(scores, -1)[:, None] * g).sum(-1)
    return x + m.conv_out(y.reshape(b, d, h, w))


@pytest.mark.parametrize("use_scale", [True, False])
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("norm_cfg", [None, dict(type="SyncBN")])
def test_transcription_matches_row_by_row(use_scale, sub_sample, norm_cfg):
    m = randomize_(NonLocal2d(C, sub_sample=sub_sample, use_scale=use_scale, norm_cfg=norm_cfg)).double().eval()
    x = torch.randn(2, C, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(m(x), row_by_row(m, x)) < 1e-12


def test_transcription_keys_and_identity_at_init():
    m = NonLocal2d(C, sub_sample=True, norm_cfg=dict(type="BN"))
    assert sorted(m.state_dict()) == sorted(
        ["g.0.conv.weight", "g.0.conv.bias", "theta.conv.weight", "theta.conv.bias", "phi.0.conv.weight",
         "phi.0.conv.bias", "conv_out.conv.weight"]
        + [f"conv_out.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    )
    x = torch.randn(1, C, 4, 6)
    with torch.no_grad():
        assert torch.equal(m(x), x)


@pytest.mark.parametrize("kwargs", [{}, {"sub_sample": True, "use_scale": False, "norm_layer": torch.nn.BatchNorm2d}])
def test_counterpart_takes_the_visattn_hyperparameters_and_weights(kwargs):
    m = randomize_(VisattnNonLocal2d(C, reduction=3, **kwargs)).double().eval()
    official = COUNTERPARTS["nonlocal"].build(m)
    assert isinstance(official, NonLocal2d) and not official.training
    assert (official.inter_channels, official.sub_sample, official.use_scale) == (4, m.sub_sample, m.use_scale)
    assert (official.conv_out.norm_cfg is None) == (m.norm_layer is None)
    for key, value in m.state_dict().items():
        assert torch.equal(official.state_dict()[key], value), key
