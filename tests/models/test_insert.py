"""insert_attention / timm_attn_layer: places, names, counts, values, export, errors."""
from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Iterable

import pytest
import timm
import torch
import torchvision
from helpers import randomize_, rel_err
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from visattn import create_attention, get_attention_class
from visattn.models import create_model
from visattn.models.insert import insert_attention, timm_attn_layer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models

torch.manual_seed(0)
X = torch.randn(2, 3, 32, 32)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def inserted(model: nn.Module) -> dict[str, nn.Module]:
    """The visattn attention modules in ``model`` (outermost only), by path."""
    out = {}
    for path, m in model.named_modules():
        if type(m).__module__.startswith("visattn.attention") and not any(path.startswith(p + ".") for p in out):
            out[path] = m
    return out


def assert_kept(before: dict[str, torch.Tensor], model: nn.Module, dropped: Iterable[str] = ()) -> None:
    """Every original state-dict entry but ``dropped`` is still there with identical values."""
    after = model.state_dict()
    assert set(before) - set(after) == set(dropped)
    for key in set(before) - set(dropped):
        assert torch.equal(after[key], before[key]), key


def tiny_resnet(block=BasicBlock) -> ResNet:
    return ResNet(block, [1, 1, 1, 1], num_classes=10)


# ---------------------------------------------------------------- torchvision ResNet-50: counts


def test_sge_every_bottleneck_resnet50():
    model = torchvision.models.resnet50()
    before, base = copy.deepcopy(model.state_dict()), n_params(model)
    assert insert_attention(model, "sge", groups=64) is model
    mods = inserted(model)
    assert n_params(model) == 25_559_080
    assert n_params(model) - base == sum(n_params(m) for m in mods.values())
    expected = [f"layer{s}.{b}.sge" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)]
    assert list(mods) == expected
    assert [m.channels for m in mods.values()] == [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    assert_kept(before, model)


def test_bam_after_stages_resnet50():
    model = torchvision.models.resnet50()
    before, base = copy.deepcopy(model.state_dict()), n_params(model)
    insert_attention(model, "bam", where="stage")
    mods = inserted(model)
    assert n_params(model) == 25_915_099  # bam_resnet50 of the official code
    assert n_params(model) - base == sum(n_params(m) for m in mods.values())
    assert {k: m.channels for k, m in mods.items()} == {"bam1": 256, "bam2": 512, "bam3": 1024}
    assert mods["bam1"].combine == "sum"
    assert_kept(before, model)


def test_psa_replaces_conv3x3_resnet50():
    model = torchvision.models.resnet50()
    before, base = copy.deepcopy(model.state_dict()), n_params(model)
    removed = sum(b.conv2.weight.numel() for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer)
    insert_attention(model, "psa", where="conv3x3")
    mods = inserted(model)
    assert len(mods) == 16 and all(k.endswith(".conv2") for k in mods)
    assert [m.stride for m in mods.values()].count(2) == 3  # first block of layers 2-4
    assert n_params(model) - base == sum(n_params(m) for m in mods.values()) - removed
    # Same as EPSANet-50 (Small): all stages use conv_groups (1, 4, 8, 16) in the official code too.
    assert n_params(model) == 22_561_715
    assert_kept(before, model, dropped=[f"{k}.weight" for k in mods])


@pytest.mark.parametrize(
    "builder, name, where, kwargs",
    [("sge_resnet50", "sge", "block", {"groups": 64}), ("cbam_resnet50", "cbam", "block", {}),
     ("bam_resnet50", "bam", "stage", {"combine": "product"}), ("epsanet50", "psa", "conv3x3", {})],
)
def test_same_layout_and_outputs_as_visattn_resnets(builder, name, where, kwargs):
    """Inserted into torchvision's ResNet-50 = visattn's SGE/CBAM/BAM-ResNet-50, EPSANet-50 (official layouts)."""
    ref = randomize_(create_model(builder, **{k: v for k, v in kwargs.items() if k == "combine"}), seed=11).eval()
    model = insert_attention(torchvision.models.resnet50(), name, where=where, **kwargs).eval()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    model.load_state_dict(ref.state_dict())
    assert rel_err(model(X), ref(X)) < 1e-5


# ---------------------------------------------------------------- values


def bn(m: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode batch norm without calling the module (whose hooks would apply the attention)."""
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def bottleneck_by_hand(b: Bottleneck, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = torch.relu(bn(b.bn1, b.conv1(x)))
    out = torch.relu(bn(b.bn2, b.conv2(out)))
    out = attn(bn(b.bn3, b.conv3(out)))
    return torch.relu(out + (x if b.downsample is None else b.downsample(x)))


@pytest.mark.parametrize("name", ["se", "sge"])
def test_torchvision_bottleneck_value(name):
    model = tiny_resnet(Bottleneck)
    insert_attention(model, name, **({"groups": 8} if name == "sge" else {}))
    randomize_(model, seed=1).eval()
    block = model.layer2[0]  # has a downsample
    x = torch.randn(2, 256, 9, 11)
    assert rel_err(block(x), bottleneck_by_hand(block, getattr(block, name), x)) < 1e-6
    # and the inserted module changes the result (the test is not vacuous)
    assert rel_err(block(x), bottleneck_by_hand(block, nn.Identity(), x)) > 1e-3


def test_torchvision_basicblock_value():
    model = tiny_resnet(BasicBlock)
    insert_attention(model, "se")
    randomize_(model, seed=2).eval()
    b = model.layer3[0]
    x = torch.randn(2, 128, 8, 8)
    out = b.se(bn(b.bn2, b.conv2(torch.relu(bn(b.bn1, b.conv1(x))))))
    assert rel_err(b(x), torch.relu(out + b.downsample(x))) < 1e-6


def test_stage_value():
    model = tiny_resnet()
    insert_attention(model, "bam", where="stage", stages=[2])
    randomize_(model, seed=3).eval()
    m = model
    x = m.maxpool(m.relu(m.bn1(m.conv1(X))))
    x = m.layer4(m.layer3(m.bam2(m.layer2.forward(m.layer1(x)))))  # .forward: without the hook
    assert rel_err(model(X), m.fc(torch.flatten(m.avgpool(x), 1))) < 1e-6


def test_identity_modules_keep_outputs():
    model = tiny_resnet(Bottleneck).eval()
    randomize_(model, seed=4)
    ref = model(X)
    insert_attention(model, "sge", groups=8)
    insert_attention(model, "dual", where="stage", stages=(1, 2, 3, 4))  # gammas = 0: identity
    sges = [m for m in inserted(model).values() if isinstance(m, get_attention_class("sge"))]
    assert len(sges) == 4
    for m in sges:
        nn.init.constant_(m.bias, 30.0)  # weight 0: gate sigmoid(30) == 1.0 in float32
    assert torch.equal(model(X), ref)


def test_regnet_block_value():
    model = timm.create_model("regnety_002", pretrained=False)
    insert_attention(model, "se")
    randomize_(model, seed=5).eval()
    b = model.s2.b1
    x = torch.randn(2, 24, 8, 8)
    out = b.attn(b.conv3.forward(b.se(b.conv2(b.conv1(x)))))  # .forward: without the hook
    assert rel_err(b(x), b.act3(out + b.downsample(x))) < 1e-6


@pytest.mark.parametrize("conv_mlp", [True, False])
def test_convnext_block_value(conv_mlp):
    model = timm.create_model("convnext_atto", pretrained=False, conv_mlp=conv_mlp)
    insert_attention(model, "se")
    randomize_(model, seed=6).eval()
    b = model.stages[1].blocks[1]
    x = torch.randn(2, 80, 6, 7)
    y = b.conv_dw(x)
    if conv_mlp:
        y = b.mlp.forward(b.norm(y))  # .forward: without the hook
    else:
        y = b.mlp.forward(b.norm(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    y = b.attn(y) * b.gamma.reshape(1, -1, 1, 1)  # attention before the layer scale
    assert rel_err(b(x), y + x) < 1e-6


# ---------------------------------------------------------------- families: places, counts, names


def _timm(name, **kw):
    return lambda: timm.create_model(name, pretrained=False, **kw)


FAMILIES = {  # builder, path pattern of block attentions, blocks per stage
    "tv_resnet": (tiny_resnet, "layer{s}.{b}.se", (1, 1, 1, 1)),
    "tv_resnext": (lambda: ResNet(Bottleneck, [1, 2, 1, 1], groups=4, width_per_group=4), "layer{s}.{b}.se", (1, 2, 1, 1)),
    "timm_resnet": (_timm("resnet18", layers=(1, 2, 1, 1)), "layer{s}.{b}.se", (1, 2, 1, 1)),
    "timm_seresnet": (_timm("seresnet18", layers=(1, 1, 1, 1)), "layer{s}.{b}.attn", (1, 1, 1, 1)),
    "timm_resnext": (_timm("resnext50_32x4d", layers=(1, 1, 1, 1)), "layer{s}.{b}.se", (1, 1, 1, 1)),
    "timm_regnetx": (_timm("regnetx_002"), "s{s}.b{b1}.attn", (1, 1, 4, 7)),
    "timm_convnext": (_timm("convnext_atto", depths=(1, 2, 1, 1)), "stages.{s0}.blocks.{b}.attn", (1, 2, 1, 1)),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_families_block_and_stage(family):
    build, pattern, depths = FAMILIES[family]
    model = build()
    before, base = copy.deepcopy(model.state_dict()), n_params(model)
    insert_attention(model, "se", stages=(2, 3))
    insert_attention(model, "bam", where="stage")  # default stages 1, 2, 3
    mods = inserted(model)
    blocks = [pattern.format(s=s, s0=s - 1, b=b, b1=b + 1) for s in (2, 3) for b in range(depths[s - 1])]
    assert sorted(mods) == sorted(blocks + ["bam1", "bam2", "bam3"])
    assert n_params(model) - base == sum(n_params(m) for m in mods.values())
    assert_kept(before, model)
    out = model(X)
    out.sum().backward()
    assert all(p.grad is not None for m in mods.values() for p in m.parameters())


def test_timm_bottleneck_and_regnet_conv3x3():
    cases = (
        (timm.create_model("resnet26", pretrained=False, layers=(1, 1, 1, 1)), "layer2.0.conv2", {}),
        (timm.create_model("regnetx_002", pretrained=False), "s2.b1.conv2.conv", {"conv_groups": (1, 2, 2, 2), "reduction": 4}),
    )
    for model, key, kwargs in cases:
        before = copy.deepcopy(model.state_dict())
        insert_attention(model, "psa", where="conv3x3", stages=[2, 3, 4], **kwargs)
        mods = inserted(model)
        assert key in mods and not any(k.startswith(("layer1.", "s1.")) for k in mods)
        assert_kept(before, model, dropped=[f"{k}.weight" for k in mods])
        model(X).sum().backward()


def test_state_dict_round_trip():
    def build():
        m = tiny_resnet()
        insert_attention(m, "sge", groups=16)
        return insert_attention(m, "bam", where="stage", stages=[3])

    model = randomize_(build(), seed=7).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = build().eval()
    fresh.load_state_dict(torch.load(buf), strict=True)
    assert torch.equal(fresh(X), model(X))


def test_deepcopy_and_pickle_follow_the_copy():
    model = randomize_(insert_attention(tiny_resnet(), "se"), seed=8).eval()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(X), model(X))
        nn.init.constant_(clone.layer1[0].se.fc2.bias, 9.0)  # only the clone's module changes
        assert not torch.equal(clone(X), model(X))


def test_device_dtype_and_mode_follow_the_model():
    model = tiny_resnet().double().eval()
    insert_attention(model, "bam", where="stage")
    assert {p.dtype for p in model.bam1.parameters()} == {torch.float64}
    assert not model.bam1.training
    assert model(X.double()).dtype == torch.float64


def test_onnx_export_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model = tiny_resnet()
    insert_attention(model, "se")
    insert_attention(model, "bam", where="stage")
    randomize_(model, seed=9).eval()
    x = torch.randn(1, 3, 48, 40)
    onx = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    ops = {n.op_type for n in onx.model_proto.graph.node}
    assert "Sigmoid" in ops  # the hooked attentions are in the graph
    sess = ort.InferenceSession(onx.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(y), model(x)) < 1e-5


# ---------------------------------------------------------------- timm attn_layer


def test_timm_attn_layer_matches_insert():
    layer = timm_attn_layer("sge", groups=64)
    built = timm.create_model("resnet50", pretrained=False, block_args=dict(attn_layer=layer))
    ours = insert_attention(timm.create_model("resnet50", pretrained=False), "sge", groups=64)
    assert n_params(built) == n_params(ours) == 25_559_080
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(built) == shapes(ours)
    assert built.layer3[0].se.groups == 64
    assert pickle.loads(pickle.dumps(layer))(128).groups == 64


def test_timm_attn_layer_same_outputs_as_insert():
    layer = timm_attn_layer("cbam")
    arch = dict(model_name="resnet26", pretrained=False, layers=(1, 1, 1, 1))
    built = randomize_(timm.create_model(**arch, block_args=dict(attn_layer=layer)), seed=10)
    ours = insert_attention(timm.create_model(**arch), "cbam")
    ours.load_state_dict(built.state_dict())
    assert torch.equal(ours.eval()(X), built.eval()(X))


def test_timm_attn_layer_device_dtype_and_errors():
    m = timm_attn_layer("se", reduction=4)(64, device="cpu", dtype=torch.float64)
    assert m.fc1.weight.dtype == torch.float64 and m.fc1.out_channels == 16
    with pytest.raises(ValueError, match="groupz"):
        timm_attn_layer("sge", groupz=4)
    with pytest.raises(ValueError, match="unknown attention"):
        timm_attn_layer("nope")


# ---------------------------------------------------------------- errors


def test_unsupported_models():
    for model in (nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()),
                  timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)):
        with pytest.raises(ValueError, match="unsupported model .*supported: torchvision ResNet"):
            insert_attention(model, "se")


def test_unsupported_positions_and_arguments():
    with pytest.raises(ValueError, match="where must be one of"):
        insert_attention(tiny_resnet(), "se", where="head")
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of \[1, 2, 3, 4\]"):
        insert_attention(tiny_resnet(), "se", stages=[0, 5])
    with pytest.raises(ValueError, match="unknown attention"):
        insert_attention(tiny_resnet(), "sgee")
    with pytest.raises(ValueError, match="conv3x3.*BasicBlock"):
        insert_attention(tiny_resnet(), "psa", where="conv3x3")
    with pytest.raises(ValueError, match="conv3x3.*ConvNeXtBlock"):
        insert_attention(timm.create_model("convnext_atto", pretrained=False), "psa", where="conv3x3")
    with pytest.raises(ValueError, match="out_channels.*'sge'"):
        insert_attention(tiny_resnet(Bottleneck), "sge", where="conv3x3")
    dilated = ResNet(Bottleneck, [1, 1, 1, 2], replace_stride_with_dilation=[False, False, True])
    with pytest.raises(ValueError, match="undilated"):
        insert_attention(dilated, "psa", where="conv3x3", stages=[4])


def test_failed_insert_leaves_model_untouched():
    model = tiny_resnet()
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match="divisible"):
        insert_attention(model, "sge", groups=256, stages=[4, 1])  # fine at 512 channels, not at 64
    assert list(model.state_dict()) == keys and not inserted(model)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("family", ["tv_resnet", "timm_resnet", "timm_seresnet", "timm_regnetx", "timm_convnext"])
def test_double_insertion(family):
    model = FAMILIES[family][0]()
    insert_attention(model, "se")
    with pytest.raises(ValueError, match="already has an inserted"):
        insert_attention(model, "sge", groups=8)  # any second block attention
    insert_attention(model, "bam", where="stage")
    with pytest.raises(ValueError, match="stage 1 .*already has an inserted"):
        insert_attention(model, "bam", where="stage", stages=1)
    with pytest.raises(ValueError, match="stage 2 .*already has an inserted"):
        insert_attention(model, "pam", where="stage", stages=2)


def test_double_insertion_timm_slot_and_conv3x3():
    built = timm.create_model("resnet18", pretrained=False, layers=(1, 1, 1, 1), block_args=dict(attn_layer=timm_attn_layer("se")))
    with pytest.raises(ValueError, match="already has an inserted SqueezeExcite"):
        insert_attention(built, "sge", groups=8)
    model = tiny_resnet(Bottleneck)
    insert_attention(model, "psa", where="conv3x3")
    with pytest.raises(ValueError, match="already a PyramidSqueezeAttention"):
        insert_attention(model, "psa", where="conv3x3")


def test_inserted_module_is_the_registered_class():
    model = insert_attention(tiny_resnet(), "se", stages=1)
    ref = create_attention("se", 64)
    assert type(model.layer1[0].se) is type(ref) and repr(model.layer1[0].se) == repr(ref)
