"""PSPNet: the recipe's pyramid, which exports at any size (the recipe, its checkpoint names: test_mmseg_networks)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from visattn.models.segmentation._mmseg import ExportableAdaptiveAvgPool2d
from visattn.models.segmentation.pspnet import PPM, PSPHead


def test_recipe_pools_at_1_2_3_6():
    assert PSPHead(32, 5, channels=16).psp_modules.pool_scales == (1, 2, 3, 6)


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
