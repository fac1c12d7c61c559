"""Residual attention modules start as the identity: a freshly built module leaves a network as it
was (what inserting one into a pretrained backbone relies on). Which modules do is each class's
``identity_at_init`` trait; the others must not be the identity, so the trait is checked both ways."""
from __future__ import annotations

import pytest
import torch
from helpers import CHANNELS

import visattn
from visattn.attention import attention_traits


def expected_at_initialisation(m: torch.nn.Module, x: torch.Tensor, identity_at_init: bool | str) -> torch.Tensor:
    """The output of a freshly built module declared identity (``True``) or identity before a submodule."""
    return x if identity_at_init is True else getattr(m, identity_at_init)(x)


def identity_at_init_names() -> list[str]:
    return [n for n in visattn.list_attentions() if attention_traits(n).identity_at_init]


def not_identity_at_init_names() -> list[str]:
    return [n for n in visattn.list_attentions() if not attention_traits(n).identity_at_init]


@pytest.mark.parametrize("name", identity_at_init_names())
@pytest.mark.parametrize("training", [False, True])
def test_identity_at_initialisation(name, training, device):
    m = visattn.create_attention(name, CHANNELS).to(device).train(training)
    x = torch.randn(2, CHANNELS, 4, 5, device=device)
    with torch.no_grad():
        assert torch.equal(m(x), expected_at_initialisation(m, x, attention_traits(name).identity_at_init))


@pytest.mark.parametrize("name", not_identity_at_init_names())
def test_not_identity_at_initialisation(name, device):
    m = visattn.create_attention(name, CHANNELS).to(device).eval()
    x = torch.randn(2, CHANNELS, 4, 5, device=device)
    with torch.no_grad():
        assert (m(x) - x).abs().max() > 1e-3


def test_a_registered_module_is_covered_by_its_traits(throwaway):
    assert throwaway in identity_at_init_names() and throwaway not in not_identity_at_init_names()
    for training in (False, True):
        test_identity_at_initialisation(throwaway, training, torch.device("cpu"))


def test_identity_before_a_submodule_is_that_submodule():
    m = visattn.create_attention("fla", CHANNELS).eval()
    x = torch.randn(1, CHANNELS, 4, 5)
    with torch.no_grad():
        assert not torch.equal(m(x), x) and torch.equal(m(x), expected_at_initialisation(m, x, "conv"))
