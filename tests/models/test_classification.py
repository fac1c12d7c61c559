"""Classifiers: EPSANet-50/101, BAM-ResNet-50/101, SGE/SE/CBAM-ResNet-50.

Independent formulations: compact transcriptions of the authors' model code (murufeng/EPSANet
``models/epsanet.py``, Jongchan/attention-module ``MODELS/model_resnet.py``/``bam.py``/``cbam.py``,
implus/PytorchInsight ``resnet_sge.py``) and timm's ``seresnet50``. Their state dicts, with random
values, must load strictly through ``visattn.load_official`` and give the same logits.
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import visattn
from helpers import randomize_, rel_err
from visattn.models import create_model
from visattn.models.epsanet import EPSANet
from visattn.models.resnet import ResNet
from visattn.weights import save_state_dict

PARAMS = {
    "epsanet50": 22_561_715,
    "epsanet101": 38_900_279,
    "bam_resnet50": 25_915_099,
    "bam_resnet101": 44_907_227,
    "sge_resnet50": 25_559_080,  # ResNet-50 25,557,032 + 16 blocks x 2 x 64
    "se_resnet50": 28_088_024,  # the SE paper's figure
    "cbam_resnet50": 28_089_624,  # SE-ResNet-50 + 16 x (7*7*2 conv + BN(1))
}


# ---------------------------------------------------------------- official code, transcribed
class OfficialSEWeight(nn.Module):  # EPSANet models/SE_weight_module.py
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        return torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class OfficialPSA(nn.Module):  # EPSANet PSAModule
    def __init__(self, inplanes, planes, stride=1, kernels=(3, 5, 7, 9), groups=(1, 4, 8, 16)):
        super().__init__()
        for i, (k, g) in enumerate(zip(kernels, groups), start=1):
            self.add_module(f"conv_{i}", nn.Conv2d(inplanes, planes // 4, k, stride, k // 2, groups=g, bias=False))
        self.se = OfficialSEWeight(planes // 4)
        self.split = planes // 4

    def forward(self, x):
        b = x.shape[0]
        xs = [self.conv_1(x), self.conv_2(x), self.conv_3(x), self.conv_4(x)]
        feats = torch.cat(xs, 1).view(b, 4, self.split, xs[0].shape[2], xs[0].shape[3])
        att = torch.cat([self.se(t) for t in xs], 1).view(b, 4, self.split, 1, 1).softmax(1)
        weighted = feats * att
        out = weighted[:, 0]
        for i in range(1, 4):  # reversed concatenation, as the official loop
            out = torch.cat((weighted[:, i], out), 1)
        return out


class OfficialBAM(nn.Module):  # Jongchan bam.py: product of the gates, HxH pooling window
    def __init__(self, c, r=16):
        super().__init__()
        h = c // r
        self.channel_att = nn.Module()
        self.channel_att.gate_c = nn.Sequential(OrderedDict(
            flatten=nn.Flatten(), gate_c_fc_0=nn.Linear(c, h), gate_c_bn_1=nn.BatchNorm1d(h),
            gate_c_relu_1=nn.ReLU(), gate_c_fc_final=nn.Linear(h, c)))
        self.spatial_att = nn.Module()
        self.spatial_att.gate_s = nn.Sequential(OrderedDict(
            gate_s_conv_reduce0=nn.Conv2d(c, h, 1), gate_s_bn_reduce0=nn.BatchNorm2d(h),
            gate_s_relu_reduce0=nn.ReLU(),
            gate_s_conv_di_0=nn.Conv2d(h, h, 3, padding=4, dilation=4), gate_s_bn_di_0=nn.BatchNorm2d(h),
            gate_s_relu_di_0=nn.ReLU(),
            gate_s_conv_di_1=nn.Conv2d(h, h, 3, padding=4, dilation=4), gate_s_bn_di_1=nn.BatchNorm2d(h),
            gate_s_relu_di_1=nn.ReLU(),
            gate_s_conv_final=nn.Conv2d(h, 1, 1)))

    def forward(self, x):
        s = x.size(2)
        mc = self.channel_att.gate_c(F.avg_pool2d(x, s, stride=s)).unsqueeze(2).unsqueeze(3).expand_as(x)
        ms = self.spatial_att.gate_s(x).expand_as(x)
        return (1 + torch.sigmoid(mc * ms)) * x


class OfficialCBAM(nn.Module):  # Jongchan cbam.py, pool_types avg + max
    def __init__(self, c, r=16):
        super().__init__()
        self.ChannelGate = nn.Module()
        self.ChannelGate.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, c))
        self.SpatialGate = nn.Module()
        self.SpatialGate.spatial = nn.Module()
        self.SpatialGate.spatial.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.SpatialGate.spatial.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x):
        hw = (x.size(2), x.size(3))
        mlp = self.ChannelGate.mlp
        att = mlp(F.avg_pool2d(x, hw, stride=hw)) + mlp(F.max_pool2d(x, hw, stride=hw))
        x = x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3)
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), 1)
        sp = self.SpatialGate.spatial
        return x * torch.sigmoid(sp.bn(sp.conv(pooled)))


class OfficialSGE(nn.Module):  # PytorchInsight resnet_sge.py
    def __init__(self, groups=64):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))

    def forward(self, x):
        b, c, h, w = x.size()
        x = x.view(b * self.groups, -1, h, w)
        xn = (x * F.adaptive_avg_pool2d(x, 1)).sum(dim=1, keepdim=True)
        t = xn.view(b * self.groups, -1)
        t = t - t.mean(dim=1, keepdim=True)
        t = t / (t.std(dim=1, keepdim=True) + 1e-5)
        t = t.view(b, self.groups, h, w) * self.weight + self.bias
        x = x * torch.sigmoid(t.view(b * self.groups, 1, h, w))
        return x.view(b, c, h, w)


class OfficialBottleneck(nn.Module):
    """The official bottleneck; ``mid`` replaces the 3x3 conv (EPSANet), ``gate`` follows bn3."""

    def __init__(self, inplanes, planes, stride, downsample, mid="conv", gate=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        if mid == "psa":
            self.conv2 = OfficialPSA(planes, planes, stride)
        else:
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample
        self.gate = gate
        if gate == "cbam":
            self.cbam = OfficialCBAM(planes * 4, 16)
        elif gate == "sge":
            self.sge = OfficialSGE(64)

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.gate is not None:
            out = getattr(self, self.gate)(out)
        return F.relu(out + residual)


class OfficialResNet(nn.Module):
    """ImageNet ResNet of the official repositories; ``bam`` adds bam1..3, ``pool7`` is Jongchan's AvgPool2d(7)."""

    def __init__(self, layers, num_classes=1000, mid="conv", gate=None, bam=False, pool7=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.bams = bam
        if bam:
            self.bam1, self.bam2, self.bam3 = OfficialBAM(256), OfficialBAM(512), OfficialBAM(1024)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            stride = 1 if i == 1 else 2
            down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
            blocks = [OfficialBottleneck(inplanes, planes, stride, down, mid, gate)]
            blocks += [OfficialBottleneck(planes * 4, planes, 1, None, mid, gate) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            inplanes = planes * 4
        self.pool = nn.AvgPool2d(7) if pool7 else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer1(x)
        x = self.bam1(x) if self.bams else x
        x = self.layer2(x)
        x = self.bam2(x) if self.bams else x
        x = self.layer3(x)
        x = self.bam3(x) if self.bams else x
        x = self.layer4(x)
        return self.fc(self.pool(x).flatten(1))


def official(name: str) -> nn.Module:
    """The authors' model for a registered 50-layer name (timm's seresnet50 for SE)."""
    if name == "epsanet50":
        return OfficialResNet((3, 4, 6, 3), mid="psa")
    if name == "bam_resnet50":
        return OfficialResNet((3, 4, 6, 3), bam=True, pool7=True)
    if name == "cbam_resnet50":
        return OfficialResNet((3, 4, 6, 3), gate="cbam", pool7=True)
    if name == "sge_resnet50":
        return OfficialResNet((3, 4, 6, 3), gate="sge")
    if name == "se_resnet50":
        import timm

        return timm.create_model("seresnet50", pretrained=False)
    raise KeyError(name)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models():
    """Each 50-layer classifier built once (1000 classes, random weights, eval)."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = randomize_(create_model(name), seed=len(cache)).eval()
        return cache[name]

    return get


# ---------------------------------------------------------------- tests
R50, R101 = (3, 4, 6, 3), (3, 4, 23, 3)
OFFICIAL_LAYOUT = {
    "epsanet50": (R50, {"mid": "psa"}),
    "epsanet101": (R101, {"mid": "psa"}),
    "bam_resnet50": (R50, {"bam": True}),
    "bam_resnet101": (R101, {"bam": True}),
    "sge_resnet50": (R50, {"gate": "sge"}),
    "cbam_resnet50": (R50, {"gate": "cbam"}),
}


@pytest.mark.parametrize("name", OFFICIAL_LAYOUT)
def test_parameter_count_equals_official_code(name):
    depth, kwargs = OFFICIAL_LAYOUT[name]
    with torch.device("meta"):
        assert n_params(OfficialResNet(depth, **kwargs)) == PARAMS[name]


@pytest.mark.parametrize("name", ["epsanet50", "bam_resnet50", "sge_resnet50", "cbam_resnet50", "se_resnet50"])
def test_official_state_dict_gives_official_logits(name, models):
    ref = randomize_(official(name), seed=123).eval()
    ours = visattn.load_official(models(name), ref.state_dict())
    # Jongchan's nets end in AvgPool2d(7): the official code only runs at 224x224
    size = 224 if name in ("bam_resnet50", "cbam_resnet50") else 64
    x = torch.randn(1 if size == 224 else 2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert torch.isfinite(expected).all() and expected.abs().max() > 1e-3
    assert rel_err(got, expected) < 1e-5


def test_released_bam_weights_need_product():
    """The paper's ``combine="sum"`` is another function: the released BAM weights are refused."""
    with torch.device("meta"):
        state = official("bam_resnet50").state_dict()
        paper = create_model("bam_resnet50", combine="sum")
    with pytest.raises(ValueError, match="combine='product'"):
        visattn.load_official(paper, state)


def test_wrong_num_classes_on_import_is_a_clear_error():
    with torch.device("meta"):  # shapes are checked before any copy
        state = official("epsanet50").state_dict()
        model = create_model("epsanet50", num_classes=10)
    mismatch = r"shape mismatches .*fc\.weight: checkpoint \(1000, 2048\) vs model \(10, 2048\)"
    with pytest.raises(ValueError, match=mismatch):
        visattn.load_official(model, state)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="epsanet50"):
        create_model("epsanet_50")
    with pytest.raises(ValueError, match="bam_resnet50"):
        create_model("bam_resnet5")


@pytest.mark.parametrize("name", ["epsanet50", "sge_resnet50", "se_resnet50", "bam_resnet101"])
def test_pretrained_without_download_link_says_how_to_load(name):
    with torch.device("meta"), pytest.raises(ValueError, match=r"visattn\.load_official"):
        create_model(name, pretrained=True)


def test_pretrained_path_loads_a_local_checkpoint(tmp_path, models):
    src = models("sge_resnet50")
    path = save_state_dict(src.state_dict(), tmp_path / "sge.safetensors")
    model = create_model("sge_resnet50", pretrained=path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)


def test_official_key_names():
    with torch.device("meta"):
        keys = set(create_model("bam_resnet50").state_dict()) | set(create_model("epsanet50").state_dict())
    for key in ("bam1.channel_att.gate_c.gate_c_fc_0.weight", "bam3.spatial_att.gate_s.gate_s_conv_final.bias",
                "layer1.0.conv2.conv_4.weight", "layer4.2.conv2.se.fc2.bias", "layer2.0.downsample.1.running_var"):
        assert key in keys


def test_train_mode_backward_reaches_attention():
    torch.manual_seed(0)
    model = ResNet((1, 1, 1, 1), num_classes=10, block_kwargs={"attn": "sge", "attn_kwargs": {"groups": 8}},
                   stage_attn="bam").train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    assert model.layer1[0].sge.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.bam2.parameters())


def test_export_and_onnx_match_eager(tmp_path):
    """A reduced-depth EPSANet (one block per stage): the PSA block is the classifiers' most
    intricate graph; the attention gates are exported by the attention modules' own tests."""
    ort = pytest.importorskip("onnxruntime")
    model = randomize_(EPSANet((1, 1, 1, 1), num_classes=10), seed=3).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.export(model, (x,))
        assert rel_err(exported.module()(x), expected) < 1e-5
    path = tmp_path / "epsanet.onnx"
    torch.onnx.export(exported, (x,), str(path), dynamo=True, optimize=False)  # reuses the export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert rel_err(torch.from_numpy(got), expected) < 1e-4
