"""The report's pictures, the query pixel of the attention maps, and the map each entry shows."""
import json

import numpy as np
import torch
from PIL import Image

from visattn.comparison import query_point
from visattn.models import create_model
from visattn.viz import COMPARE_PLOT_PX, attention_map_of, figure_size


def test_pictures(compared):
    out, _, _ = compared
    report = json.loads((out / "report.json").read_text())
    assert [e["attention_map"] for e in report["entries"]] == [None, {"module": "head.attention", "map": "sge_gate"}]
    sizes = {name: Image.open(out / name).size for name in ("miou_vs_cost.png", "per_class_iou_delta.png",
                                                            "attention_maps.png")}
    assert sizes["attention_maps.png"] == figure_size(2)  # a panel per entry
    assert sizes["miou_vs_cost.png"] == (2 * COMPARE_PLOT_PX, COMPARE_PLOT_PX)
    assert sizes["per_class_iou_delta.png"][1] == COMPARE_PLOT_PX


def test_query_point_is_on_an_object_near_the_centre():
    mask = np.zeros((9, 9), np.uint8)
    mask[0, 0] = 3  # far from the centre
    mask[5, 6] = 7
    mask[8, 8] = 255
    assert query_point(mask) == (5, 6)
    assert query_point(np.zeros((6, 8), np.uint8)) == (3, 4)  # a single class: the centre


def test_attention_map_of_prefers_the_query_map():
    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    danet = create_model("danet", num_classes=3, encoder="resnet18").eval()
    name, amap = attention_map_of(danet, image, (8, 20))
    assert amap.point is not None and amap.spatial and amap.key.endswith("q0")
    assert name in dict(danet.named_modules())
    assert attention_map_of(create_model("fcn", num_classes=3, encoder="resnet18"), image, (8, 20)) is None
