"""PSPNet: mmseg's checkpoint names convert to the network; outputs and loss weights; the pyramid exports at any size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err
from mmseg_keys import assert_converts, network_keys, official_keys

from visattn._official import mmseg as mm
from visattn.models.segmentation._mmseg import ExportableAdaptiveAvgPool2d
from visattn.models.segmentation.pspnet import PPM, pspnet, pspnet_r101_d8, pspnet_r50_d8


def psp_head_keys() -> list[str]:
    return official_keys(lambda: mm.PSPHead(in_channels=2048, channels=512, in_index=3, num_classes=19))


def test_mmseg_checkpoint_keys_convert_to_the_network():
    with torch.device("meta"):
        r50, r101 = pspnet_r50_d8(), pspnet_r101_d8()
    spots = {
        "backbone.stem.7.weight": "encoder.bn1.weight",
        "decode_head.psp_modules.3.1.bn.running_var": "head.psp_modules.3.1.bn.running_var",
        "decode_head.bottleneck.conv.weight": "head.bottleneck.conv.weight",
        "auxiliary_head.convs.0.conv.weight": "aux.0.weight",
    }
    assert_converts(r50, network_keys(psp_head_keys()), spots)
    assert_converts(r101, network_keys(psp_head_keys(), blocks=(3, 4, 23, 3)), spots)


def test_network_training_and_eval_outputs():
    model = pspnet(num_classes=3, encoder="resnet18", channels=16)
    assert model.loss_weights == {"out": 1.0, "aux": 0.4} and model.align_corners is False
    assert model.head.psp_modules.pool_scales == (1, 2, 3, 6)
    x = torch.randn(2, 3, 33, 41)
    outs = model.train()(x)
    assert set(outs) == {"out", "aux"} and all(o.shape == (2, 3, 33, 41) for o in outs.values())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 33, 41)


def test_pyramid_pooling_exports_to_onnx_for_any_size(tmp_path):
    """Exported at one size, the pooling bins follow the input's size (PyTorch's ONNX translation of
    adaptive pooling keeps the traced size's bins: wrong values or an index error elsewhere)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pool = ExportableAdaptiveAvgPool2d(3).eval()
    assert isinstance(PPM((1, 3), 4, 2)[1][0], ExportableAdaptiveAvgPool2d)
    size = {2: torch.export.Dim("h", min=3, max=256), 3: torch.export.Dim("w", min=3, max=256)}
    path = tmp_path / "pool.onnx"
    torch.onnx.export(pool, (torch.randn(1, 4, 8, 10),), str(path), dynamo=True, dynamic_shapes=(size,),
                      external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in [(8, 10), (16, 20), (12, 9), (7, 31)]:
        x = torch.randn(1, 4, h, w)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert rel_err(torch.from_numpy(got), F.adaptive_avg_pool2d(x, 3)) < 1e-6, (h, w)
