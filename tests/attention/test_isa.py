"""InterlacedSparseAttention against its groups gathered by strided slicing and mmseg's ISAHead (transcribed)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visattn
from helpers import assert_gradients_close, gradients, match_reference, randomize_, rel_err
from visattn._official.mmseg import COUNTERPARTS, ISABlock
from visattn.attention.isa import InterlacedSparseAttention

C = 8
H, W = 7, 10
DOWN = (3, 4)  # 3 x 3 blocks of 3 x 4 cells on the 9 x 12 padded map (rows 1 + 1, columns 1 + 1)


def attend(block, cells: torch.Tensor) -> torch.Tensor:
    """One group's self-attention on ``cells`` ``(B, C, h, w)`` with explicit softmax (eval BN)."""
    q = block.query_project(cells).flatten(2)
    k = block.key_project(cells).flatten(2)
    v = block.value_project(cells).flatten(2)
    attn = torch.softmax(torch.einsum("bdi,bdj->bij", q, k) / block.key_channels**0.5, -1)
    return block.output_project(torch.einsum("bij,bcj->bci", attn, v).reshape(cells.shape))


def reference(m: InterlacedSparseAttention, x: torch.Tensor) -> torch.Tensor:
    ph, pw = DOWN
    padded = F.pad(x, (1, 1, 1, 1))
    y = torch.empty_like(padded)
    for r in range(ph):  # long range: the cells at offset (r, c) of every block
        for c in range(pw):
            y[:, :, r::ph, c::pw] = attend(m.global_relation, padded[:, :, r::ph, c::pw])
    z = torch.empty_like(y)
    for i in range(0, y.shape[2], ph):  # short range: each block
        for j in range(0, y.shape[3], pw):
            z[:, :, i : i + ph, j : j + pw] = attend(m.local_relation, y[:, :, i : i + ph, j : j + pw])
    return m.out_conv(torch.cat([z[:, :, 1 : 1 + H, 1 : 1 + W], x], 1))


def build(seed=0) -> InterlacedSparseAttention:
    return randomize_(InterlacedSparseAttention(C, isa_channels=4, down_factor=DOWN), seed).double().eval()


def test_forward_and_gradients_match_reference():
    m = build()
    got, want = match_reference(m, lambda x: reference(m, x), (2, C, H, W), rtol=1e-12)
    for name in got:
        assert rel_err(got[name], want[name]) < 1e-10, name


@pytest.mark.parametrize("size", [(7, 10), (6, 8), (2, 3)])
@pytest.mark.parametrize("training", [False, True])
def test_matches_mmseg(size, training, device):
    m = build(seed=1).to(device).train(training)
    official = COUNTERPARTS["isa"].build(m)
    assert isinstance(official, ISABlock) and tuple(official.down_factor) == DOWN
    x = torch.randn(2, C, *size, dtype=torch.float64, device=device)
    weight = torch.randn(2, C, *size, dtype=torch.float64, device=device)
    got, want = gradients(m, m, x, weight), gradients(official, official, x, weight)
    # training-mode BN after output_project removes the constant the value bias adds: its gradient
    # is 0 up to rounding, hence a floor
    assert_gradients_close(got, want, rtol=1e-9, atol=1e-12 * max(g.abs().max() for g in want.values()))


def test_group_weights_and_maps():
    m = build()
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    weights = m.attention_weights(x)
    long_range, short_range = weights["long_range"], weights["short_range"]
    assert long_range.shape == (1, 3, 4, 9, 9) and short_range.shape == (1, 3, 3, 12, 12)
    torch.testing.assert_close(long_range.sum(-1), torch.ones(1, 3, 4, 9, dtype=torch.float64))
    torch.testing.assert_close(short_range.sum(-1), torch.ones(1, 3, 3, 12, dtype=torch.float64))
    point = (4, 6)  # padded (5, 7): block (1, 1), offset (2, 3)
    long_map, short_map = m.attention_maps(x, [point])
    assert (long_map.key, short_map.key) == ("isa_long_q0", "isa_short_q0") and long_map.point == point
    padded_long = torch.zeros(9, 12, dtype=torch.float64)
    padded_long[2::3, 3::4] = long_range[0, 2, 3, 1 * 3 + 1].reshape(3, 3)
    padded_short = torch.zeros(9, 12, dtype=torch.float64)
    padded_short[3:6, 4:8] = short_range[0, 1, 1, 2 * 4 + 3].reshape(3, 4)
    torch.testing.assert_close(torch.from_numpy(long_map.values).double(), padded_long[1:8, 1:11], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(torch.from_numpy(short_map.values).double(), padded_short[1:8, 1:11], rtol=1e-6, atol=1e-12)


def test_keys_and_arguments():
    m = InterlacedSparseAttention(16)
    assert m.isa_channels == 8 and m.down_factor == (8, 8)
    keys = set(m.state_dict())
    for relation in ("global_relation", "local_relation"):
        assert {f"{relation}.query_project.1.bn.running_var", f"{relation}.key_project.0.conv.weight",
                f"{relation}.value_project.bias", f"{relation}.output_project.bn.weight"} <= keys
    assert "out_conv.conv.weight" in keys and "out_conv.conv.bias" not in keys
    with pytest.raises(ValueError, match="down_factor"):
        InterlacedSparseAttention(16, down_factor=(8,))
    with pytest.raises(ValueError, match="down_factor"):
        InterlacedSparseAttention(16, down_factor=(0, 8))
    assert visattn.create_attention("isa", 32, down_factor=(4, 4)).extra_repr() == (
        "channels=32, isa_channels=16, down_factor=(4, 4)"
    )
