"""ANN: APNB's shared projection held once, the attention over pooled keys (the recipe: test_mmseg_networks)."""
from __future__ import annotations

import pytest
import torch
from helpers import randomize_, rel_err
from mmseg_keys import ann_head_keys

from visattn.models import create_model
from visattn.models.segmentation.ann import APNB, ANNHead, AsymmetricNonLocal, ann_r50_d8
from visattn.viz import attention_map_of


def test_mmseg_checkpoint_holds_the_shared_projection_twice_and_loads_it_once():
    with torch.device("meta"):
        r50 = ann_r50_d8()
    assert "context.stages.0.query_project.conv.weight" in ann_head_keys()
    assert r50.convert_official_state_dict({"decode_head.context.stages.0.query_project.conv.weight": None}) == {}


def test_attention_over_pooled_keys_equals_the_dense_formula():
    block = randomize_(AsymmetricNonLocal(12, 16, 8, 16, share_key_query=False), seed=2).eval()
    x, y = torch.randn(2, 16, 9, 10), torch.randn(2, 12, 11, 7)
    with torch.no_grad():
        q = block.query_project(x).flatten(2)  # (B, c, N)
        k = block.key_downsample(block.key_project(y))  # (B, c, 110)
        v = block.key_downsample(block.value_project(y))
        attn = torch.softmax(q.transpose(1, 2) @ k / 8**0.5, -1)  # (B, N, 110)
        want = block.out_project((v @ attn.transpose(1, 2)).view(2, 8, 9, 10))
        assert k.shape[-1] == 1 + 9 + 36 + 64
        assert rel_err(block(x, y), want) < 1e-5


def test_pixel_weights_are_the_attention_each_value_pixel_gets():
    block = randomize_(AsymmetricNonLocal(12, 16, 8, 16, share_key_query=False), seed=3).eval()
    x, y = torch.randn(2, 16, 9, 10), torch.randn(2, 12, 11, 7)
    with torch.no_grad():
        q = block.query_project(x).flatten(2)
        k = block.key_downsample(block.key_project(y))
        context = block.key_downsample(block.value_project(y)) @ torch.softmax(q.transpose(1, 2) @ k / 8**0.5, -1).mT
        pixels = block.pixel_weights(x, y)  # (B, N, 11, 7)
        assert pixels.shape == (2, 90, 11, 7)
        torch.testing.assert_close(pixels.sum((-2, -1)), torch.ones(2, 90))
        assert rel_err(block.value_project(y).flatten(2) @ pixels.flatten(2).mT, context) < 1e-5
        torch.testing.assert_close(block.pixel_weights(x, y, [(4, 7), (0, 0)]), pixels[:, [47, 0]])


def test_apnb_draws_the_attention_of_a_query_and_ann_shows_it():
    apnb = randomize_(APNB(16, 8, 16), seed=4).eval()
    x = torch.randn(1, 16, 9, 10)
    (amap,) = apnb.attention_maps(x, [(4, 7)])
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(amap.values), apnb.stages[0].pixel_weights(x, x)[0, 47])
        assert apnb.attention_weights(x)["attention"].shape == (1, 90, 9, 10)
    assert amap.key == "apnb_q0" and amap.point == (4, 7) and amap.spatial
    image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()
    name, shown = attention_map_of(create_model("ann", num_classes=3, encoder="resnet18").eval(), image, (8, 20))
    assert name == "head.context" and shown.key == "apnb_q0"


def test_shared_projection_is_held_once_and_queries_must_be_full_size():
    head = ANNHead((32, 48), 5, channels=16, project_channels=8)
    assert head.context.stages[0].query_project is None
    assert not any("context.stages.0.query_project" in k for k in head.state_dict())
    with pytest.raises(ValueError, match="query_scales"):
        ANNHead((32, 48), 5, query_scales=(1, 2))
