"""DualAttention: parallel PAM + CAM, ``pam(x) + cam(x) - x`` with the same weights."""
from __future__ import annotations

import torch

import visattn
from helpers import gradients, randomize_, rel_err
from visattn._official import danet
from visattn.attention.dual import DualAttention

C = 16


def build(seed=0, **kwargs) -> DualAttention:
    return randomize_(DualAttention(C, **kwargs), seed)


def test_forward_is_sum_of_branches():
    m = build(chunk_size=7)
    x = torch.randn(2, C, 5, 9)
    with torch.no_grad():
        want = m.pam(x) + m.cam(x) - x
        assert rel_err(m(x), want) < 1e-5
        # and each branch actually contributes
        assert (m.pam(x) - x).abs().max() > 1e-2 and (m.cam(x) - x).abs().max() > 1e-2


def test_gradients_match_sum_of_branches():
    m = build(seed=1)
    x = torch.randn(2, C, 4, 6)
    weight = torch.randn(x.shape)
    got, want = gradients(m, m, x, weight), gradients(lambda x: m.pam(x) + m.cam(x) - x, m, x, weight)
    for name in got:
        if name != "pam.key_conv.bias":  # mathematically 0 (softmax ignores it): noise on both sides
            assert rel_err(got[name], want[name]) < 1e-4, name


def test_attention_weights_merge_both_branches():
    m = build()
    x = torch.randn(2, C, 5, 6)
    weights = m.attention_weights(x, queries=[(1, 2)])
    assert set(weights) == {"position", "channel"}
    torch.testing.assert_close(weights["position"], m.pam.attention_weights(x, [(1, 2)])["position"])
    torch.testing.assert_close(weights["channel"], m.cam.attention_weights(x)["channel"])
    assert weights["position"].shape == (2, 1, 5, 6) and weights["channel"].shape == (2, C, C)
    assert m.attention_weights(x)["position"].shape == (2, 30, 5, 6)


def test_load_official_branch_checkpoints():
    # the official PAM_Module's and CAM_Module's weights under the branch names
    pam, cam = randomize_(danet.PAM_Module(C), seed=4), randomize_(danet.CAM_Module(C), seed=5)
    checkpoint = {f"{name}.{k}": v for name, branch in (("pam", pam), ("cam", cam)) for k, v in branch.state_dict().items()}
    m = visattn.load_official(DualAttention(C), checkpoint)
    x = torch.randn(2, C, 6, 7)
    with torch.no_grad():
        assert rel_err(m(x), pam(x) + cam(x) - x) < 1e-5
