"""ANN: mmseg's checkpoint names convert to the network (APNB's shared projection once); outputs and loss weights."""
from __future__ import annotations

import pytest
import torch
from helpers import randomize_, rel_err
from mmseg_keys import assert_converts, network_keys, official_keys

from visattn._official import mmseg as mm
from visattn.models.segmentation.ann import ANNHead, AsymmetricNonLocal, ann, ann_r101_d8, ann_r50_d8


def ann_head_keys() -> list[str]:
    return official_keys(lambda: mm.ANNHead(in_channels=[1024, 2048], in_index=[2, 3], channels=512,
                                            project_channels=256, num_classes=19))


def test_mmseg_checkpoint_keys_convert_to_the_network():
    with torch.device("meta"):
        r50, r101 = ann_r50_d8(), ann_r101_d8()
    keys = ann_head_keys()
    assert "context.stages.0.query_project.conv.weight" in keys  # mmseg saves the shared projection twice
    spots = {
        "decode_head.fusion.stages.0.query_project.bn.weight": "head.fusion.stages.0.query_project.bn.weight",
        "decode_head.context.stages.0.key_project.conv.weight": "head.context.stages.0.key_project.conv.weight",
        "decode_head.fusion.bottleneck.conv.weight": "head.fusion.bottleneck.conv.weight",
        "auxiliary_head.convs.0.conv.weight": "aux.0.weight",
    }
    assert_converts(r50, network_keys(keys), spots)
    assert_converts(r101, network_keys(keys, blocks=(3, 4, 23, 3)), spots)
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


def test_shared_projection_is_held_once_and_queries_must_be_full_size():
    head = ANNHead((32, 48), 5, channels=16, project_channels=8)
    assert head.context.stages[0].query_project is None
    assert not any("context.stages.0.query_project" in k for k in head.state_dict())
    with pytest.raises(ValueError, match="query_scales"):
        ANNHead((32, 48), 5, query_scales=(1, 2))


def test_network_training_and_eval_outputs():
    model = ann(num_classes=3, encoder="resnet18", channels=16, project_channels=8)
    assert model.loss_weights == {"out": 1.0, "aux": 0.4} and model.align_corners is False
    x = torch.randn(2, 3, 33, 41)
    outs = model.train()(x)
    assert set(outs) == {"out", "aux"} and all(o.shape == (2, 3, 33, 41) for o in outs.values())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 33, 41)
