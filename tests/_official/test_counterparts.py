"""Every registered official counterpart computes what its visattn module computes.

For each name in :func:`visattn._official.counterparts`: the visattn module with random weights
(gammas non-zero) and the official module built from it, and the official module with random
weights and the visattn module :func:`visattn.load_official` builds from its checkpoint; outputs
and input gradients compared in float64 (batch 1 where the official code mixes batch items, square
maps where it needs them).
"""
from __future__ import annotations

import pytest
import torch
from helpers import gradients, randomize_, rel_err
from torch import nn

import visattn
from visattn._official import counterparts

C = 64
COUNTERPARTS = counterparts()


def test_counterparts_are_registered_attentions():
    assert {"pam", "cam", "cca", "fla", "bam", "psa", "sge", "cbam"} <= set(COUNTERPARTS)
    assert set(COUNTERPARTS) <= set(visattn.list_attentions())


def _compare(name: str, ours: nn.Module, other: nn.Module, device) -> None:
    """The visattn module and the official one: outputs and input gradients in float64."""
    cp = COUNTERPARTS[name]
    assert type(other).__module__.startswith("visattn._official.")
    ours, other = (m.double().eval().to(device) for m in (ours, other))
    batch = 2 if cp.batch_independent else 1
    size = (12, 12) if cp.square_only else (9, 13)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, C, *size, generator=gen, dtype=torch.float64).to(device)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device)
    outs = [m(x).detach() for m in (ours, other)]  # with autograd on: the training path
    grads = [gradients(m, m, x, g)["input"] for m in (ours, other)]
    # 1e-6, not 1e-10: a module may keep its softmax in float32 (PSA's branch softmax does).
    assert rel_err(outs[0], outs[1]) < 1e-6
    assert rel_err(grads[0], grads[1]) < 1e-6
    assert rel_err(outs[0], x) > 1e-2  # not the identity: the attention path is compared too


def _ours(name: str) -> nn.Module:
    return visattn.create_attention(name, C, **COUNTERPARTS[name].visattn_kwargs)


@pytest.mark.parametrize("name", sorted(COUNTERPARTS))
def test_official_equals_visattn(name, device):
    ours = randomize_(_ours(name), seed=1)
    _compare(name, ours, COUNTERPARTS[name].build(ours), device)


@pytest.mark.parametrize("name", sorted(COUNTERPARTS))
def test_load_official_takes_the_official_weights(name, device):
    """The official module's state dict, saved from DataParallel (``module.`` keys), loads strictly
    into a fresh visattn module, which then computes what the official module computes."""
    official = randomize_(COUNTERPARTS[name].build(_ours(name)), seed=4)
    checkpoint = {f"module.{k}": v for k, v in official.state_dict().items()}
    _compare(name, visattn.load_official(_ours(name), checkpoint), official, device)


@pytest.mark.parametrize("name", sorted(n for n, cp in COUNTERPARTS.items() if cp.sdpa is not None))
def test_sdpa_baseline_equals_visattn(name, device):
    ours = randomize_(_ours(name), seed=1)
    _compare(name, ours, COUNTERPARTS[name].sdpa(ours), device)


@pytest.mark.parametrize("name", sorted(COUNTERPARTS))
def test_build_follows_the_module_mode(name):
    ours, build = _ours(name), COUNTERPARTS[name].build
    assert build(ours.train()).training and not build(ours.eval()).training


def test_build_refuses_what_the_official_code_fixes():
    with pytest.raises(ValueError, match="reduction=8"):
        COUNTERPARTS["pam"].build(visattn.create_attention("pam", C, reduction=4))
    with pytest.raises(ValueError, match="combine='product'"):
        COUNTERPARTS["bam"].build(visattn.create_attention("bam", C))
