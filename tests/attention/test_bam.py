"""BAM against a functional formulation of the official code, driven by official-key state dicts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visattn
from helpers import randomize_
from visattn.attention.bam import BAM

C = 64
HIDDEN = C // 16

# Every parameter/buffer key of the official BAM(64) (Jongchan/attention-module, MODELS/bam.py).
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
OFFICIAL_SHAPES: dict[str, tuple[int, ...]] = {
    "channel_att.gate_c.gate_c_fc_0.weight": (HIDDEN, C),
    "channel_att.gate_c.gate_c_fc_0.bias": (HIDDEN,),
    **{f"channel_att.gate_c.gate_c_bn_1.{k}": (HIDDEN,) for k in _BN},
    "channel_att.gate_c.gate_c_fc_final.weight": (C, HIDDEN),
    "channel_att.gate_c.gate_c_fc_final.bias": (C,),
    "spatial_att.gate_s.gate_s_conv_reduce0.weight": (HIDDEN, C, 1, 1),
    "spatial_att.gate_s.gate_s_conv_reduce0.bias": (HIDDEN,),
    **{f"spatial_att.gate_s.gate_s_bn_reduce0.{k}": (HIDDEN,) for k in _BN},
    **{
        key: shape
        for i in range(2)
        for key, shape in {
            f"spatial_att.gate_s.gate_s_conv_di_{i}.weight": (HIDDEN, HIDDEN, 3, 3),
            f"spatial_att.gate_s.gate_s_conv_di_{i}.bias": (HIDDEN,),
            **{f"spatial_att.gate_s.gate_s_bn_di_{i}.{k}": (HIDDEN,) for k in _BN},
        }.items()
    },
    "spatial_att.gate_s.gate_s_conv_final.weight": (1, HIDDEN, 1, 1),
    "spatial_att.gate_s.gate_s_conv_final.bias": (1,),
}
for key in OFFICIAL_SHAPES:
    if key.endswith("num_batches_tracked"):
        OFFICIAL_SHAPES[key] = ()


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in OFFICIAL_SHAPES.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=gen)
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.5
    return sd


def reference(sd, x, combine: str, square_window: bool = False) -> torch.Tensor:
    """The official BAM forward (eval mode) written with functional ops on the official keys.

    ``square_window=True`` reproduces the official channel pooling, ``avg_pool2d(x, H, stride=H)``.
    """

    def bn(t, name):
        return F.batch_norm(t, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"], sd[f"{name}.bias"])

    c, s = "channel_att.gate_c.", "spatial_att.gate_s."
    pooled = F.avg_pool2d(x, x.shape[2], stride=x.shape[2]) if square_window else x.mean((2, 3), keepdim=True)
    h = F.linear(pooled.flatten(1), sd[c + "gate_c_fc_0.weight"], sd[c + "gate_c_fc_0.bias"])
    h = F.relu(bn(h, c + "gate_c_bn_1"))
    mc = F.linear(h, sd[c + "gate_c_fc_final.weight"], sd[c + "gate_c_fc_final.bias"])[:, :, None, None].expand_as(x)

    t = F.conv2d(x, sd[s + "gate_s_conv_reduce0.weight"], sd[s + "gate_s_conv_reduce0.bias"])
    t = F.relu(bn(t, s + "gate_s_bn_reduce0"))
    for i in range(2):
        t = F.conv2d(t, sd[s + f"gate_s_conv_di_{i}.weight"], sd[s + f"gate_s_conv_di_{i}.bias"], padding=4, dilation=4)
        t = F.relu(bn(t, s + f"gate_s_bn_di_{i}"))
    ms = F.conv2d(t, sd[s + "gate_s_conv_final.weight"], sd[s + "gate_s_conv_final.bias"]).expand_as(x)

    att = 1 + torch.sigmoid(mc + ms if combine == "sum" else mc * ms)
    return att * x


def test_state_dict_keys_are_the_official_ones():
    sd = BAM(C).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == OFFICIAL_SHAPES


@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("size", [(1, 1), (6, 6), (7, 13), (13, 7)])
def test_matches_reference(combine, size):
    m = randomize_(BAM(C, combine=combine), seed=1).eval()
    x = torch.randn(2, C, *size)
    with torch.no_grad():
        ref = reference(m.state_dict(), x, combine)
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)  # the in-place inference path
    torch.testing.assert_close(m(x).detach(), ref, rtol=1e-5, atol=1e-5)  # the differentiable one


def test_sum_and_product_differ():
    sd = official_state_dict()
    x = torch.randn(1, C, 6, 8)
    assert (reference(sd, x, "sum") - reference(sd, x, "product")).abs().max() > 1e-2


def test_global_pool_vs_official_square_window():
    m = randomize_(BAM(C), seed=2).eval()
    sd = m.state_dict()
    with torch.no_grad():
        square = torch.randn(2, C, 6, 6)
        # Square maps: the official HxH window is the global mean.
        torch.testing.assert_close(m(square), reference(sd, square, "sum", square_window=True), rtol=1e-5, atol=1e-5)
        # H < W < 2H: the official window averages only the leftmost HxH square; ours the whole map.
        wide = torch.randn(2, C, 6, 10)
        ours = m(wide)
        torch.testing.assert_close(ours, reference(sd, wide, "sum"), rtol=1e-5, atol=1e-5)
        assert (ours - reference(sd, wide, "sum", square_window=True)).abs().max() > 1e-3
        # W >= 2H or H > W: the official pooling cannot even run.
        with pytest.raises(RuntimeError):
            reference(sd, torch.randn(1, C, 4, 9), "sum", square_window=True)
        with pytest.raises(RuntimeError):
            reference(sd, torch.randn(1, C, 9, 4), "sum", square_window=True)
        assert m(torch.randn(1, C, 4, 9)).shape == (1, C, 4, 9)


def test_load_official_product():
    sd = official_state_dict(seed=3)
    m = visattn.load_official(BAM(C, combine="product"), {f"module.{k}": v for k, v in sd.items()}).eval()
    x = torch.randn(2, C, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference(sd, x, "product"), rtol=1e-5, atol=1e-5)


def test_load_official_refuses_sum():
    with pytest.raises(ValueError, match="combine='product'"):
        visattn.load_official(BAM(C), official_state_dict())


def test_attention_weights_give_the_output():
    m = randomize_(BAM(C, combine="product"), seed=4).eval()
    x = torch.randn(2, C, 5, 9)
    w = m.attention_weights(x)
    assert w["gate"].shape == (2, C, 5, 9) and w["channel"].shape == (2, C, 1, 1) and w["spatial"].shape == (2, 1, 5, 9)
    torch.testing.assert_close(w["gate"], torch.sigmoid(w["channel"] * w["spatial"]))
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * (1 + w["gate"]))


def test_train_mode_needs_more_than_one_item():
    # Documented limitation of BatchNorm1d on the pooled (B, C//r) vector, as in the official code.
    m = BAM(C).train()
    with pytest.raises(ValueError, match="more than 1 value"):
        m(torch.randn(1, C, 4, 4))
    assert m(torch.randn(2, C, 4, 4)).shape == (2, C, 4, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduction=16"):
        BAM(8)
    with pytest.raises(ValueError, match="combine"):
        BAM(C, combine="max")
    with pytest.raises(ValueError, match="dilation"):
        BAM(C, dilation=0)
