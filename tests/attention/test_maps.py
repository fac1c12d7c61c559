"""Every registered mechanism's pictures (``attention_maps``): what they hold, against its ``attention_weights``.

The structural checks run over the registry and read each class's traits (the maps it declares it
draws, once or per query point), so a new mechanism is checked without an entry here. ``EXPECTED``
gives, for the mechanisms defined alongside these tests, each map's values computed
independently from the module's ``attention_weights`` (and the input, for CAM's gathered channel);
a mechanism added later checks its values in its own test file.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import visattn
from helpers import CHANNELS, randomize_
from visattn.attention import attention_traits
from visattn.attention._common import AttentionMap

H, W = 5, 7
POINTS = [(0, 0), (2, 5), (4, 6)]


def build(name: str, device: torch.device | str = "cpu") -> nn.Module:
    return randomize_(visattn.create_attention(name, CHANNELS), seed=1).eval().to(device)


def feature(device: torch.device | str = "cpu") -> Tensor:
    return torch.randn(1, CHANNELS, H, W, generator=torch.Generator().manual_seed(0)).to(device)


def _cross(column: Tensor, row: Tensor, h: int, w: int) -> np.ndarray:
    """The criss-cross weights of query ``(h, w)`` placed on its column and row, entry by entry."""
    out = np.zeros((column.shape[0], row.shape[1]))
    for k in range(column.shape[0]):
        out[k, w] += column[h, w, k].item()
    for k in range(row.shape[1]):
        out[h, k] += row[h, w, k].item()
    return out


def _pam(m, x, points) -> dict[str, Tensor]:
    rows = m.attention_weights(x)["position"][0]  # (N, H, W): every query's softmax row
    return {f"pam_q{i}": rows[h * W + w] for i, (h, w) in enumerate(points)}


def _cam(m, x, points) -> dict[str, Tensor]:
    att = m.attention_weights(x)["channel"][0]
    expected = {"cam_matrix": att}
    for i, (h, w) in enumerate(points):
        q = int(x[0, :, h, w].argmax())
        expected[f"cam_q{i}"] = sum(att[q, k] * x[0, k] for k in range(CHANNELS))
    return expected


def _cca(m, x, points) -> dict[str, np.ndarray]:
    weights = m.attention_weights(x)
    return {f"cca_q{i}": _cross(weights["column"][0], weights["row"][0], *p) for i, p in enumerate(points)}


def _rcca(m, x, points) -> dict[str, np.ndarray | Tensor]:
    weights = m.attention_weights(x)
    expected = {}
    for i, (h, w) in enumerate(points):
        expected[f"rcca_pass1_q{i}"] = _cross(weights["column_1"][0], weights["row_1"][0], h, w)
        expected[f"rcca_reach_q{i}"] = weights["reach"][0, h, w]
    return expected


def _fla(m, x, points) -> dict[str, Tensor]:
    weights = m.attention_weights(x)
    col, row = weights["column"][0], weights["row"][0]
    peak = 0.5 * (row.amax(-1).mean(-1)[:, None] + col.amax(-1).mean(-1)[None, :])
    expected = {}
    for i, (h, w) in enumerate(points):
        expected.update({f"fla_q{i}": peak, f"fla_column_q{i}": col[w], f"fla_row_q{i}": row[h]})
    return expected


EXPECTED: dict[str, Callable[[nn.Module, Tensor, list], dict]] = {
    "pam": _pam,
    "cam": _cam,
    "dual": lambda m, x, points: {**_pam(m, x, points), **_cam(m, x, points)},
    "cca": _cca,
    "rcca": _rcca,
    "fla": _fla,
    "bam": lambda m, x, _: {"bam_gate": m.attention_weights(x)["gate"][0].mean(0),
                            "bam_spatial": m.attention_weights(x)["spatial"][0, 0]},
    "sge": lambda m, x, _: {"sge_gate": m.attention_weights(x)["gate"][0].mean(0),
                            "sge_group0": m.attention_weights(x)["gate"][0, 0]},
    "psa": lambda m, x, _: {"psa_branch": m.attention_weights(x)["branch"][0, :, :, 0, 0]},
    "se": lambda m, x, _: {"se_channel": m.attention_weights(x)["channel"][0, :, 0, 0][None]},
    "cbam": lambda m, x, _: {"cbam_spatial": m.attention_weights(x)["spatial"][0, 0]},
}


def _array(v: np.ndarray | Tensor) -> np.ndarray:
    return v.double().cpu().numpy() if isinstance(v, Tensor) else v


def registered_names() -> list[str]:
    return visattn.list_attentions()


def query_map_names() -> list[str]:
    """The mechanisms that draw maps per query point."""
    return [n for n in visattn.list_attentions() if attention_traits(n).query_maps_drawn]


def declared_maps(name: str, points: list) -> dict[str, tuple[int, int] | None]:
    """Each map key ``name`` declares it draws for ``points``, with the query point it belongs to."""
    traits = attention_traits(name)
    keys: dict[str, tuple[int, int] | None] = dict.fromkeys(traits.maps_drawn)
    keys.update({f"{prefix}{i}": p for prefix in traits.query_maps_drawn for i, p in enumerate(points)})
    return keys


@pytest.mark.parametrize("name", registered_names())
def test_maps_are_well_formed(name, device):
    maps = build(name, device).attention_maps(feature(device), POINTS)
    assert len({a.key for a in maps}) == len(maps)  # each key once
    assert {a.key: a.point for a in maps} == declared_maps(name, POINTS)
    for a in maps:
        assert isinstance(a, AttentionMap) and a.values.dtype == np.float32
        assert np.isfinite(a.values).all(), a.key
        assert a.values.ndim == 2 and (a.values.shape == (H, W) or not a.spatial), a.key
        assert a.point is None or (a.spatial or a.grid == (H, W)), a.key


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_maps_equal_the_attention_weights(name, device):
    m, x = build(name, device), feature(device)
    maps = m.attention_maps(x, POINTS)
    expected = EXPECTED[name](m, x, POINTS)
    assert sorted(a.key for a in maps) == sorted(expected)
    for a in maps:
        np.testing.assert_allclose(a.values, _array(expected[a.key]), rtol=1e-5, atol=1e-6, err_msg=a.key)


@pytest.mark.parametrize("name", registered_names())
def test_default_point_is_the_centre_and_one_map_is_required(name):
    m, x = build(name), feature()
    centred = m.attention_maps(x)
    assert centred and all(a.point in (None, (H // 2, W // 2)) for a in centred)
    assert [a.key for a in centred] == [a.key for a in m.attention_maps(x, [(H // 2, W // 2)])]
    with pytest.raises(ValueError, match="one feature map"):
        m.attention_maps(torch.cat([x, x]))


@pytest.mark.parametrize("name", query_map_names())
def test_query_outside_the_map_is_refused(name):
    with pytest.raises(ValueError, match=r"query cells \[\(5, 0\)\] outside the 5x7 feature map"):
        build(name).attention_maps(feature(), [(H, 0)])


@pytest.mark.parametrize("name", sorted(set(registered_names()) - set(query_map_names())))
def test_points_are_ignored_without_query_maps(name):
    m, x = build(name), feature()
    outside = m.attention_maps(x, [(H, 0)])
    assert [(a.key, a.point) for a in outside] == [(a.key, a.point) for a in m.attention_maps(x)]
    for a, b in zip(outside, m.attention_maps(x)):
        np.testing.assert_array_equal(a.values, b.values)


def test_a_registered_module_is_covered_by_its_traits(throwaway, monkeypatch):
    assert throwaway in registered_names() and throwaway in query_map_names()
    assert throwaway not in EXPECTED  # no expected-value function: the generic checks alone
    test_maps_are_well_formed(throwaway, torch.device("cpu"))
    test_default_point_is_the_centre_and_one_map_is_required(throwaway)
    test_query_outside_the_map_is_refused(throwaway)
    # A declaration that does not match what the module draws fails.
    monkeypatch.setattr(visattn.get_attention_class(throwaway), "maps_drawn", ("throwaway_other",))
    with pytest.raises(AssertionError):
        test_maps_are_well_formed(throwaway, torch.device("cpu"))


def test_pam_maps_are_distributions():
    for a in build("pam").attention_maps(feature(), POINTS):
        assert a.values.sum() == pytest.approx(1, abs=1e-5) and (a.values >= 0).all()


def test_cca_map_is_zero_off_the_cross():
    (h, w) = POINTS[1]
    (a,) = build("cca").attention_maps(feature(), [(h, w)])
    assert a.values.sum() == pytest.approx(1, abs=1e-5)
    off_cross = np.ones((H, W), bool)
    off_cross[h, :] = off_cross[:, w] = False
    assert (a.values[off_cross] == 0).all() and (a.values[~off_cross] > 0).sum() == H + W - 1


def test_rcca_first_pass_is_its_cca_and_reach_covers_the_map():
    m, x = build("rcca"), feature()
    maps = {a.key: a.values for a in m.attention_maps(x, POINTS[1:2])}
    (single,) = m.cca.attention_maps(x, POINTS[1:2])
    np.testing.assert_allclose(maps["rcca_pass1_q0"], single.values, rtol=1e-6)
    assert (maps["rcca_reach_q0"] > 0).all()  # two passes reach every position
