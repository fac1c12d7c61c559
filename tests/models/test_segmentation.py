"""Segmentors: loss weights, attention heads, the authors' backbones, official checkpoints, export, errors.

The output contract every registered model keeps (shapes, batch independence, training outputs,
state-dict round trip) is tested over the registry in ``test_models.py``.

The official-checkpoint tests build the authors' networks from a compact transcription of their
code (junfu1115/DANet, speedinghzl/CCNet, maggiesong7/FullyAttentional) at small widths, with
random weights, and check that ``visattn.load_official`` reproduces their logits exactly.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTENTION_KWARGS, CHANNELS, randomize_, rel_err
from torch import nn

import visattn
from visattn.models import create_model, list_models

# resnet18 at a quarter of its widths: stages 2, 3, 4 have 32, 64, 128 channels
SMALL = {"encoder": "resnet18", "encoder_kwargs": {"channels": (16, 32, 64, 128)}}
K = 5


def _eval(model: nn.Module) -> nn.Module:
    return randomize_(model).eval()


# ---------------------------------------------------------------- heads and variants


@pytest.mark.parametrize(
    "name, kwargs, loss_weights",
    [
        ("fcn", {}, {"out": 1.0}),
        ("fcn", {"aux": True, "aux_weight": 0.2}, {"out": 1.0, "aux": 0.2}),
        ("danet", {}, {"out": 1.0, "pam": 1.0, "cam": 1.0}),
        ("ccnet", {}, {"out": 1.0, "aux": 0.4}),
        ("flanet", {}, {"out": 1.0, "aux2": 1.0, "aux3": 1.0}),
        ("attnet", {"attention": "cbam"}, {"out": 1.0}),
    ],
)
def test_official_loss_weights_name_the_training_outputs_in_order(name, kwargs, loss_weights):
    model = create_model(name, num_classes=K, **SMALL, **kwargs).train()
    assert model.loss_weights == loss_weights
    assert list(model(torch.randn(2, 3, 33, 41))) == list(loss_weights)


@pytest.mark.parametrize("attention", visattn.list_attentions())
def test_attention_head_accepts_every_attention(attention):
    kwargs = {"channels": CHANNELS, **ATTENTION_KWARGS[attention]}
    model = _eval(create_model("attnet", num_classes=K, attention=attention, **SMALL, **kwargs))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 35, 51))
    assert out.shape == (1, K, 35, 51) and torch.isfinite(out).all()


def test_recurrence_is_configurable_and_defaults_to_two():
    assert create_model("ccnet", **SMALL).head.rcca.recurrence == 2
    assert create_model("ccnet", recurrence=1, **SMALL).head.rcca.recurrence == 1


def test_named_variants_use_the_official_backbones():
    names = list_models()
    for arch in ("fcn", "danet", "ccnet", "flanet"):
        assert {f"{arch}_r50_d8", f"{arch}_r101_d8", arch} <= set(names)
    with torch.device("meta"):
        ccnet = create_model("ccnet_r101_d8")
        danet = create_model("danet_r101_d8")
    enc = ccnet.encoder
    assert enc.conv1[6].out_channels == 128 and enc.maxpool.ceil_mode
    assert enc.layer3[0].conv2.dilation == (2, 2) and enc.layer4[0].conv2.dilation == (4, 4)
    assert len(enc.layer3) == 23
    assert [b.conv2.dilation[0] for b in danet.encoder.layer4] == [4, 8, 16]
    assert danet.encoder.conv1.kernel_size == (7, 7) and danet.encoder.layer3[0].conv2.dilation == (1, 1)


# ---------------------------------------------------------------- errors


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown encoder 'resnet5'"):
        create_model("fcn", encoder="resnet5")
    with pytest.raises(ValueError, match="output_stride"):
        create_model("fcn", encoder="resnet18", output_stride=32)
    with pytest.raises(ValueError, match="does not support output_stride"):
        create_model("fcn", encoder="vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="num_classes"):
        create_model("danet", num_classes=0, **SMALL)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("danet_r102_d8")
    with pytest.raises(ValueError, match="ResNet-style"):
        create_model("ccnet_r50_d8", encoder="convnext_atto")
    with pytest.raises(ValueError, match="unknown attention"):
        create_model("attnet", attention="nope", **SMALL)
    model = create_model("danet", num_classes=3, **SMALL)
    other = create_model("danet", num_classes=4, **SMALL).state_dict()
    state = {k.replace("encoder.", "pretrained.", 1): v for k, v in other.items()}
    with pytest.raises(ValueError, match="shape mismatches"):
        visattn.load_official(model, state)


# ---------------------------------------------------------------- official layouts (transcribed)

INF = float("inf")


class ABN(nn.BatchNorm2d):
    """InPlace-ABN in eval: BN with scale ``|weight| + eps``, then LeakyReLU(0.01) or nothing."""

    def __init__(self, c, activation="leaky_relu"):
        super().__init__(c)
        self.activation = activation

    def forward(self, x):
        scale = self.weight.abs() + self.eps
        x = F.batch_norm(x, self.running_mean, self.running_var, scale, self.bias, False, 0.0, self.eps)
        return F.leaky_relu(x, 0.01) if self.activation == "leaky_relu" else x


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride, dilation, downsample, bn):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = bn(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """The authors' dilated ResNets. ``stem``: "7x7" (DANet 2018), "ccnet" (conv1/bn1..conv3/bn3),
    "seq" (FLANet: ``conv1`` Sequential + ``bn1``). ``dilations``: per-block dilation of stages 3, 4."""

    def __init__(self, layers, widths, stem, stem_width, dilations, ceil=False, bn=nn.BatchNorm2d):
        super().__init__()
        self.stem = stem
        sw = stem_width
        if stem == "7x7":
            self.conv1, self.bn1, self.inplanes = nn.Conv2d(3, sw, 7, 2, 3, bias=False), bn(sw), sw
        elif stem == "ccnet":
            self.conv1, self.bn1 = nn.Conv2d(3, sw, 3, 2, 1, bias=False), bn(sw)
            self.conv2, self.bn2 = nn.Conv2d(sw, sw, 3, 1, 1, bias=False), bn(sw)
            self.conv3, self.bn3 = nn.Conv2d(sw, 2 * sw, 3, 1, 1, bias=False), bn(2 * sw)
            self.inplanes = 2 * sw
        else:
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, sw, 3, 2, 1, bias=False), bn(sw), nn.ReLU(),
                nn.Conv2d(sw, sw, 3, 1, 1, bias=False), bn(sw), nn.ReLU(),
                nn.Conv2d(sw, 2 * sw, 3, 1, 1, bias=False),
            )
            self.bn1, self.inplanes = bn(2 * sw), 2 * sw
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=ceil)
        dils = [[1] * layers[0], [1] * layers[1], *dilations]
        for i, (planes, n, stride) in enumerate(zip(widths, layers, (1, 2, 1, 1))):
            down = None
            if stride != 1 or self.inplanes != planes * 4:
                down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), bn(planes * 4))
            blocks = [Bottleneck(self.inplanes, planes, stride, dils[i][0], down, bn)]
            self.inplanes = planes * 4
            blocks += [Bottleneck(self.inplanes, planes, 1, dils[i][j], None, bn) for j in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x):
        if self.stem == "ccnet":
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            x = F.relu(self.bn3(self.conv3(x)))
        else:
            x = F.relu(self.bn1(self.conv1(x)))
        c2 = self.layer2(self.layer1(self.maxpool(x)))
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


class PAM_Module(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.query_conv = nn.Conv2d(c, c // 8, 1)
        self.key_conv = nn.Conv2d(c, c // 8, 1)
        self.value_conv = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)
        attention = torch.softmax(torch.bmm(q, self.key_conv(x).view(b, -1, h * w)), dim=-1)
        out = torch.bmm(self.value_conv(x).view(b, -1, h * w), attention.permute(0, 2, 1))
        return self.gamma * out.view(b, c, h, w) + x


class CAM_Module(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = x.view(b, c, -1)
        energy = torch.bmm(q, q.permute(0, 2, 1))
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        out = torch.bmm(torch.softmax(energy_new, dim=-1), q)
        return self.gamma * out.view(b, c, h, w) + x


class DANetHeadOfficial(nn.Module):
    def __init__(self, cin, k):
        super().__init__()
        inter = cin // 4
        def cbr(i):
            return nn.Sequential(nn.Conv2d(i, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter), nn.ReLU())
        self.conv5a, self.conv5c = cbr(cin), cbr(cin)
        self.sa, self.sc = PAM_Module(inter), CAM_Module(inter)
        self.conv51, self.conv52 = cbr(inter), cbr(inter)
        self.conv6, self.conv7, self.conv8 = (nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(inter, k, 1)) for _ in range(3))

    def forward(self, x):
        sa_conv = self.conv51(self.sa(self.conv5a(x)))
        sc_conv = self.conv52(self.sc(self.conv5c(x)))
        return self.conv8(sa_conv + sc_conv), self.conv6(sa_conv), self.conv7(sc_conv)


class CrissCrossAttention(nn.Module):
    """CCNet's pure-PyTorch CCA (``-inf`` on the column part's diagonal, one softmax over H + W)."""

    def __init__(self, c):
        super().__init__()
        self.query_conv = nn.Conv2d(c, c // 8, 1)
        self.key_conv = nn.Conv2d(c, c // 8, 1)
        self.value_conv = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        q_h = q.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h).permute(0, 2, 1)
        q_w = q.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w).permute(0, 2, 1)
        k_h = k.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
        k_w = k.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
        v_h = v.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
        v_w = v.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
        inf = -torch.diag(torch.tensor(INF).repeat(h), 0).unsqueeze(0).repeat(b * w, 1, 1)
        energy_h = (torch.bmm(q_h, k_h) + inf).view(b, w, h, h).permute(0, 2, 1, 3)
        energy_w = torch.bmm(q_w, k_w).view(b, h, w, w)
        concate = torch.softmax(torch.cat([energy_h, energy_w], 3), dim=3)
        att_h = concate[:, :, :, 0:h].permute(0, 2, 1, 3).contiguous().view(b * w, h, h)
        att_w = concate[:, :, :, h : h + w].contiguous().view(b * h, w, w)
        out_h = torch.bmm(v_h, att_h.permute(0, 2, 1)).view(b, w, -1, h).permute(0, 2, 3, 1)
        out_w = torch.bmm(v_w, att_w.permute(0, 2, 1)).view(b, h, -1, w).permute(0, 2, 1, 3)
        return self.gamma * (out_h + out_w) + x


class RCCAModule(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        inter = cin // 4
        self.conva = nn.Sequential(nn.Conv2d(cin, inter, 3, padding=1, bias=False), ABN(inter))
        self.cca = CrissCrossAttention(inter)
        self.convb = nn.Sequential(nn.Conv2d(inter, inter, 3, padding=1, bias=False), ABN(inter))
        self.bottleneck = nn.Sequential(
            nn.Conv2d(cin + inter, cout, 3, padding=1, bias=False), ABN(cout), nn.Dropout2d(0.1), nn.Conv2d(cout, k, 1)
        )

    def forward(self, x, recurrence):
        out = self.conva(x)
        for _ in range(recurrence):
            out = self.cca(out)
        return self.bottleneck(torch.cat([x, self.convb(out)], 1))


class FullyAttentionalBlock(nn.Module):
    """FLANet's FLA as released (its batch mixing is harmless at B = 1, used here)."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Linear(c, c), nn.Linear(c, c)
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, _, h, w = x.shape
        feat_h = x.permute(0, 3, 1, 2).contiguous().view(b * w, -1, h)
        feat_w = x.permute(0, 2, 1, 3).contiguous().view(b * h, -1, w)
        enc_h = self.conv1(F.avg_pool2d(x, [1, w]).view(b, -1, h).permute(0, 2, 1).contiguous())
        enc_w = self.conv2(F.avg_pool2d(x, [h, 1]).view(b, -1, w).permute(0, 2, 1).contiguous())
        rel_h = torch.softmax(torch.matmul(feat_h, enc_h.repeat(w, 1, 1)), dim=-1)
        rel_w = torch.softmax(torch.matmul(feat_w, enc_w.repeat(h, 1, 1)), dim=-1)
        aug_h = torch.bmm(rel_h, feat_h).view(b, w, -1, h).permute(0, 2, 3, 1)
        aug_w = torch.bmm(rel_w, feat_w).view(b, h, -1, w).permute(0, 2, 1, 3)
        return self.conv(self.gamma * (aug_h + aug_w) + x)


class FLANetOutput(nn.Module):
    def __init__(self, cin, mid, k):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(cin, mid, 3, 1, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Dropout2d(0.1), nn.Conv2d(mid, k, 1),
        )

    def forward(self, x):
        return self.conv(x)


# small widths: stem 16, planes (16, 32, 64, 128) -> stages 2, 3, 4 have 128, 256, 512 channels
LAYERS, WIDTHS, STEM = (2, 2, 2, 2), (16, 32, 64, 128), 16
TIMM_SMALL = {"channels": WIDTHS, "stem_width": STEM}


class DANetOfficial(nn.Module):
    def __init__(self, k):
        super().__init__()
        # 2018 DANet101 layout: 7x7 stem, stage 3 (1, 2, ...), stage-4 multi-grid (4, 8, 16); fc kept
        self.pretrained = ResNet(LAYERS, WIDTHS, "7x7", 64, [[1, 2], [4, 8]])  # timm: 7x7 stems are 64 wide
        self.pretrained.fc = nn.Linear(512, 10)
        self.head = DANetHeadOfficial(512, k)

    def forward(self, x):
        return F.interpolate(self.head(self.pretrained(x)[-1])[0], x.shape[-2:], mode="bilinear", align_corners=True)


class CCNetOfficial(nn.Module):
    def __init__(self, k):
        super().__init__()
        bn = lambda c: ABN(c, "identity")  # noqa: E731
        backbone = ResNet(LAYERS, WIDTHS, "ccnet", STEM, [[2, 2], [4, 4]], ceil=True, bn=bn)
        for name, m in backbone.named_children():  # CCNet's modules sit at the top level
            self.add_module(name, m)
        self.forward_backbone = backbone.forward
        self.head = RCCAModule(512, 128, k)
        self.dsn = nn.Sequential(nn.Conv2d(256, 128, 3, 1, 1), ABN(128), nn.Dropout2d(0.1), nn.Conv2d(128, k, 1))

    def forward(self, x):
        _, _, c4 = self.forward_backbone(x)
        return F.interpolate(self.head(c4, 2), x.shape[-2:], mode="bilinear", align_corners=True)


class FLANetOfficial(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.backbone = ResNet(LAYERS, WIDTHS, "seq", STEM, [[2, 2], [4, 4]])
        self.conv = nn.Sequential(
            nn.Conv2d(512, 128, 3, 1, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 128, 3, 1, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        )
        self.fully = FullyAttentionalBlock(128)
        self.conv_out1 = FLANetOutput(512 + 128, 128, k)
        self.conv_out2 = FLANetOutput(128, 64, k)
        self.conv_out3 = FLANetOutput(256, 64, k)

    def forward(self, x):
        _, _, x3 = self.backbone(x)
        out = self.conv_out1(torch.cat([x3, self.fully(self.conv(x3))], 1))
        return F.interpolate(out, x.shape[-2:], mode="bilinear", align_corners=True)


OFFICIAL = {
    "danet": (DANetOfficial, {"multi_grid": (4, 8, 16)}),
    "ccnet": (CCNetOfficial, {"stem_type": "deep", "full_first_dilation": True, "ceil_maxpool": True}),
    "flanet": (FLANetOfficial, {"stem_type": "deep", "full_first_dilation": True}),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_checkpoint_gives_official_logits(name):
    official_cls, encoder_kwargs = OFFICIAL[name]
    official = randomize_(official_cls(K), seed=1).eval()
    model = create_model(name, num_classes=K, encoder="resnet26", encoder_kwargs={**TIMM_SMALL, **encoder_kwargs})
    visattn.load_official(model, official.state_dict())
    x = torch.randn(1, 3, 65, 47)  # odd size: exercises CCNet's ceil-mode pool
    with torch.no_grad():
        expected = official(x)
        got = model.eval()(x)
    assert got.shape == expected.shape == (1, K, 65, 47)
    assert rel_err(got, expected) < 1e-4


def test_ccnet_import_applies_inplace_abn_scale():
    official = randomize_(CCNetOfficial(K), seed=2)
    with torch.no_grad():
        official.head.conva[1].weight.neg_()
    model = create_model("ccnet", num_classes=K, encoder="resnet26", encoder_kwargs={**TIMM_SMALL, **OFFICIAL["ccnet"][1]})
    visattn.load_official(model, official.state_dict())
    expected = official.head.conva[1].weight.abs() + 1e-5
    assert torch.equal(model.head.conva[1].weight, expected)
    assert model.aux[0].bias is not None and model.aux[0].out_channels == 128


# ---------------------------------------------------------------- export


def test_torch_export_and_onnx_match_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _eval(create_model("danet", num_classes=K, **SMALL))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.export(model, (x,))
        assert rel_err(exported.module()(x), expected) < 1e-5
    path = tmp_path / "danet.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert rel_err(torch.from_numpy(got), expected) < 1e-4
