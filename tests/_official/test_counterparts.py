"""Every registered official counterpart computes what its visattn module computes.

For each name in :func:`visattn._official.counterparts`: the visattn module with random weights
(gammas non-zero) and the official module built from it, outputs and input gradients compared in
float64 (batch 1 where the official code mixes batch items, square maps where it needs them).
"""
from __future__ import annotations

import pytest
import torch
from helpers import randomize_, rel_err

import visattn
from visattn._official import counterparts

C = 64
COUNTERPARTS = counterparts()


def test_counterparts_are_registered_attentions():
    assert {"pam", "cam", "cca", "fla", "bam", "psa", "sge", "cbam"} <= set(COUNTERPARTS)
    assert set(COUNTERPARTS) <= set(visattn.list_attentions())


def _compare(name: str, build_other, device) -> None:
    """The visattn module and ``build_other(it)``: outputs and input gradients in float64."""
    cp = COUNTERPARTS[name]
    ours = randomize_(visattn.create_attention(name, C, **cp.visattn_kwargs), seed=1).double().eval().to(device)
    other = build_other(ours)
    assert type(other).__module__.startswith("visattn._official.")
    batch = 2 if cp.batch_independent else 1
    size = (12, 12) if cp.square_only else (9, 13)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, C, *size, generator=gen, dtype=torch.float64).to(device)
    outs, grads = [], []
    for module in (ours, other):
        xi = x.clone().requires_grad_()
        y = module(xi)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device)
        (y * g).sum().backward()
        outs.append(y.detach())
        grads.append(xi.grad)
    # 1e-6, not 1e-10: a module may keep its softmax in float32 (PSA's branch softmax does).
    assert rel_err(outs[0], outs[1]) < 1e-6
    assert rel_err(grads[0], grads[1]) < 1e-6
    assert rel_err(outs[0], x) > 1e-2  # not the identity: the attention path is compared too


@pytest.mark.parametrize("name", sorted(COUNTERPARTS))
def test_official_equals_visattn(name, device):
    _compare(name, COUNTERPARTS[name].build, device)


@pytest.mark.parametrize("name", sorted(n for n, cp in COUNTERPARTS.items() if cp.sdpa is not None))
def test_sdpa_baseline_equals_visattn(name, device):
    _compare(name, COUNTERPARTS[name].sdpa, device)


@pytest.mark.parametrize("name", sorted(COUNTERPARTS))
def test_build_follows_the_module_mode(name):
    cp = COUNTERPARTS[name]
    ours = visattn.create_attention(name, C, **cp.visattn_kwargs)
    assert cp.build(ours.train()).training and not cp.build(ours.eval()).training


def test_build_refuses_what_the_official_code_fixes():
    with pytest.raises(ValueError, match="reduction=8"):
        COUNTERPARTS["pam"].build(visattn.create_attention("pam", C, reduction=4))
    with pytest.raises(ValueError, match="combine='product'"):
        COUNTERPARTS["bam"].build(visattn.create_attention("bam", C))
