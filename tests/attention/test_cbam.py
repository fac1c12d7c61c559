"""CBAM against the official (Jongchan/attention-module) formulation on the official keys."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visattn
from helpers import randomize_
from visattn.attention.cbam import CBAM

C, HIDDEN = 64, 4


def official_shapes(k: int = 7) -> dict[str, tuple[int, ...]]:
    return {
        "ChannelGate.mlp.1.weight": (HIDDEN, C), "ChannelGate.mlp.1.bias": (HIDDEN,),
        "ChannelGate.mlp.3.weight": (C, HIDDEN), "ChannelGate.mlp.3.bias": (C,),
        "SpatialGate.spatial.conv.weight": (1, 2, k, k),
        "SpatialGate.spatial.bn.weight": (1,), "SpatialGate.spatial.bn.bias": (1,),
        "SpatialGate.spatial.bn.running_mean": (1,), "SpatialGate.spatial.bn.running_var": (1,),
        "SpatialGate.spatial.bn.num_batches_tracked": (),
    }  # fmt: skip


def official_reference(sd, x, k: int = 7) -> torch.Tensor:
    """Official CBAM forward (eval): per-pool-type MLP (full-size avg/max pool windows), summed
    logits, sigmoid; then ChannelPool [max, mean] -> conv -> BN -> sigmoid on the refined map."""

    def mlp(p):
        h = F.relu(F.linear(p.flatten(1), sd["ChannelGate.mlp.1.weight"], sd["ChannelGate.mlp.1.bias"]))
        return F.linear(h, sd["ChannelGate.mlp.3.weight"], sd["ChannelGate.mlp.3.bias"])

    hw = (x.shape[2], x.shape[3])
    raw = mlp(F.avg_pool2d(x, hw, stride=hw)) + mlp(F.max_pool2d(x, hw, stride=hw))
    x = x * torch.sigmoid(raw)[:, :, None, None].expand_as(x)

    pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
    s = F.conv2d(pooled, sd["SpatialGate.spatial.conv.weight"], padding=(k - 1) // 2)
    bn = "SpatialGate.spatial.bn."
    s = F.batch_norm(s, sd[bn + "running_mean"], sd[bn + "running_var"], sd[bn + "weight"], sd[bn + "bias"], eps=1e-5)
    return x * torch.sigmoid(s)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (7, 13), (33, 47)])
def test_matches_official(size):
    m = randomize_(CBAM(C), seed=1).eval()
    x = torch.randn(2, C, *size)
    with torch.no_grad():
        torch.testing.assert_close(m(x), official_reference(m.state_dict(), x), rtol=1e-5, atol=1e-5)


def test_kernel_size_3():
    m = randomize_(CBAM(C, kernel_size=3), seed=2).eval()
    x = torch.randn(2, C, 6, 9)
    with torch.no_grad():
        torch.testing.assert_close(m(x), official_reference(m.state_dict(), x, k=3), rtol=1e-5, atol=1e-5)


def test_official_keys_and_load_official():
    m = CBAM(C)
    shapes = official_shapes()
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == shapes
    gen = torch.Generator().manual_seed(3)
    sd = {k: torch.randn(s, generator=gen) * 0.5 for k, s in shapes.items() if not k.endswith("num_batches_tracked")}
    sd["SpatialGate.spatial.bn.running_var"] = torch.tensor([0.8])
    visattn.load_official(m, {f"module.{k}": v for k, v in sd.items()}).eval()
    x = torch.randn(2, C, 9, 10)
    with torch.no_grad():
        torch.testing.assert_close(m(x), official_reference(sd, x), rtol=1e-5, atol=1e-5)


def test_attention_weights_give_the_output():
    m = randomize_(CBAM(C), seed=4).eval()
    x = torch.randn(2, C, 5, 7)
    w = m.attention_weights(x)
    assert w["channel"].shape == (2, C, 1, 1) and w["spatial"].shape == (2, 1, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * w["channel"] * w["spatial"])


def test_official_bn_momentum():
    assert CBAM(C).SpatialGate.spatial.bn.momentum == 0.01


@pytest.mark.parametrize(
    "kwargs, match",
    [({"channels": 8}, "reduction=16"), ({"channels": C, "kernel_size": 4}, "odd"), ({"channels": C, "reduction": 0}, "reduction")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CBAM(**kwargs)


def _built_by(path: str) -> list[CBAM]:
    """The CBAM modules (256 channels: ResNet-50's first stage) as ``path`` builds them."""
    if path == "create_attention":
        return [visattn.create_attention("cbam", 256)]
    if path == "insert_attention":
        torchvision = pytest.importorskip("torchvision")
        from visattn.models.insert import insert_attention

        model = insert_attention(torchvision.models.resnet50(), "cbam")
    else:
        from visattn.models import create_model

        model = create_model("cbam_resnet50", num_classes=10)
    return [block.cbam for block in model.layer1]


@pytest.mark.parametrize("path", ["create_attention", "insert_attention", "cbam_resnet50"])
def test_every_path_initialises_alike(path):
    """The spatial gate starts at sigmoid(0) = 0.5 (its BN weight 0, as the official ResNet's init) and
    every layer from PyTorch's default init (uniform within 1/sqrt(fan_in)), whoever builds CBAM."""
    for m in _built_by(path):
        bn = m.SpatialGate.spatial.bn
        for value, want in [(bn.weight, 0.0), (bn.bias, 0.0), (bn.running_mean, 0.0), (bn.running_var, 1.0)]:
            torch.testing.assert_close(value.detach(), torch.full((1,), want))
        for layer, fan_in in [(m.SpatialGate.spatial.conv, 2 * 7 * 7), (m.ChannelGate.mlp[1], 256), (m.ChannelGate.mlp[3], 16)]:
            bound = fan_in**-0.5
            assert bound / 2 < layer.weight.abs().max() <= bound, layer  # a Kaiming-normal conv exceeds it
        x = torch.randn(2, 256, 6, 5)
        for training in (True, False):
            m.train(training)
            torch.testing.assert_close(m.attention_weights(x)["spatial"], torch.full((2, 1, 6, 5), 0.5))
