"""Contract every registered attention module honours, parametrised over the registry.

Value tests against independent formulations live in each module's own test file; here the
shared rules: shapes at odd sizes, batch independence, gradients, bad input, and the export and
layout paths (torch.compile, torch.export, ONNX with dynamic sizes, channels_last; bf16 autocast
is in ``test_precision.py``). Every module is built with its default arguments at ``CHANNELS`` channels.
The parametrisations read the registry when the tests are collected, so a module registers and is
tested.
"""
from __future__ import annotations

import pytest
import torch

import visattn
from visattn.attention import AttentionTraits, attention_traits
from visattn.attention._common import check_input
from helpers import CHANNELS, randomize_


def registered_names() -> list[str]:
    return visattn.list_attentions()


def build(name: str, seed: int = 0, device: torch.device | str = "cpu") -> torch.nn.Module:
    return randomize_(visattn.create_attention(name, CHANNELS), seed).eval().to(device)


def test_registry_maps_names_to_classes():
    from visattn.attention.pam import PositionAttention

    assert visattn.get_attention_class("PAM") is PositionAttention
    for name in registered_names():
        cls = visattn.get_attention_class(name)
        assert isinstance(visattn.create_attention(name, CHANNELS), cls)
        assert callable(cls.attention_weights) and callable(cls.attention_maps)
        assert isinstance(attention_traits(name), AttentionTraits)


def test_traits_are_read_from_the_class_and_checked(throwaway, monkeypatch):
    assert attention_traits(throwaway) == AttentionTraits(
        identity_at_init=True, maps_drawn=("throwaway_gate",), query_maps_drawn=("throwaway_similarity_q",))
    cls = visattn.get_attention_class(throwaway)
    monkeypatch.setattr(cls, "float32_weights", ("gate",), raising=False)
    with pytest.raises(ValueError, match=r"^ThrowawayGate: float32_weights \('gate',\) without has_softmax$"):
        attention_traits(throwaway)
    monkeypatch.delattr(cls, "float32_weights")
    monkeypatch.setattr(cls, "maps_drawn", ())
    monkeypatch.setattr(cls, "query_maps_drawn", ())
    with pytest.raises(ValueError, match="^ThrowawayGate: an attention module draws at least one map"):
        attention_traits(throwaway)


@pytest.mark.parametrize("name", registered_names())
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (7, 13), (33, 47)])
def test_shape_and_finite(name, size, device):
    x = torch.randn(2, CHANNELS, *size, device=device)
    with torch.no_grad():
        y = build(name, device=device)(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", registered_names())
def test_batch_independence_in_eval(name, device):
    m = build(name, device=device)
    x = torch.randn(3, CHANNELS, 5, 7, device=device)
    with torch.no_grad():
        for batch in (1, 2, 3):
            y = m(x[:batch])
            for i in range(batch):
                torch.testing.assert_close(y[i : i + 1], m(x[i : i + 1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", registered_names())
def test_not_identity_once_trained(name, device):
    x = torch.randn(1, CHANNELS, 6, 5, device=device)
    with torch.no_grad():
        assert (build(name, device=device)(x) - x).abs().max() > 1e-3


@pytest.mark.parametrize("name", registered_names())
def test_gradcheck_float64(name):
    m = build(name).double()
    x = torch.randn(1, CHANNELS, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


@pytest.mark.parametrize("name", registered_names())
def test_parameter_gradients_flow(name, device):
    m = build(name, device=device).train()
    x = torch.randn(2, CHANNELS, 5, 6, device=device)
    m(x).square().mean().backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads.keys()
    assert [n for n, p in m.named_parameters() if not p.requires_grad and p.grad is not None] == []  # frozen stay so


@pytest.mark.parametrize("name", registered_names())
def test_channels_last(name, device):
    m = build(name, device=device)
    x = torch.randn(2, CHANNELS, 9, 11, device=device)
    with torch.no_grad():
        ref = m(x)
        out = m(x.to(memory_format=torch.channels_last))
        out_cl_module = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_cl_module, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", registered_names())
def test_attention_weights(name, device):
    m = build(name, device=device)
    x = torch.randn(2, CHANNELS, 5, 6, device=device)
    weights = m.attention_weights(x)
    assert isinstance(weights, dict) and weights
    for key, w in weights.items():
        assert isinstance(key, str) and w.shape[0] == 2 and torch.isfinite(w).all()
        assert not w.requires_grad


@pytest.mark.parametrize("name", registered_names())
def test_wrong_rank_and_channels_raise(name, device):
    m = build(name, device=device)
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(CHANNELS, 5, 5, device=device))
    with pytest.raises(ValueError, match=f"expected {CHANNELS} input channels"):
        m(torch.randn(1, CHANNELS + 8, 5, 5, device=device))


@pytest.mark.parametrize("name", registered_names())
def test_empty_feature_map_raises_and_empty_batch_passes(name, device):
    m = build(name, device=device)
    for shape in ((1, CHANNELS, 0, 5), (2, CHANNELS, 5, 0)):
        with pytest.raises(ValueError, match=rf"empty feature map, shape \({', '.join(map(str, shape))}\)"):
            m(torch.randn(shape, device=device))
    with torch.no_grad():
        assert m(torch.randn(0, CHANNELS, 5, 6, device=device)).shape == (0, CHANNELS, 5, 6)


@pytest.mark.parametrize("name", registered_names())
def test_integer_input_raises(name, device):
    with pytest.raises(ValueError, match="expected a floating-point input, got torch.int64"):
        build(name, device=device)(torch.ones(1, CHANNELS, 5, 5, dtype=torch.long, device=device))


@pytest.mark.parametrize("name", registered_names())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_into_fp32_module_raises(name, dtype, device):
    m = build(name, device=device)
    x = torch.randn(1, CHANNELS, 5, 5, device=device)
    with pytest.raises(ValueError, match=rf"input dtype {dtype} does not match the module's parameters \(torch.float32\); use torch.autocast"):
        m(x.to(dtype))
    with torch.no_grad():
        assert m.to(dtype)(x.to(dtype)).dtype == dtype


def test_check_input_dtype_against_its_owner():
    owner = torch.nn.Conv2d(CHANNELS, CHANNELS, 1)
    x = torch.randn(1, CHANNELS, 3, 3)
    check_input("M", x, CHANNELS, owner)
    with pytest.raises(ValueError, match=r"^M: input dtype torch.bfloat16 does not match the module's parameters \(torch.float32\)"):
        check_input("M", x.bfloat16(), CHANNELS, owner)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for the module
        check_input("M", x.bfloat16(), CHANNELS, owner)
    check_input("M", x.bfloat16(), CHANNELS)  # no owner: dtype unchecked
    check_input("M", x.double(), CHANNELS, owner.double())


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="Did you mean .*'pam'") as err:
        visattn.create_attention("pma", 64)
    assert "cbam" in str(err.value)


def test_unknown_argument_lists_valid_ones():
    with pytest.raises(ValueError, match="reductoin; valid arguments: reduction$"):
        visattn.create_attention("se", 64, reductoin=4)
    with pytest.raises(ValueError, match="^fla: unknown argument\\(s\\) reduction; fla takes no arguments besides channels$"):
        visattn.create_attention("fla", 64, reduction=4)


@pytest.mark.parametrize("name", registered_names())
def test_torch_compile_fullgraph(name):
    m = build(name)
    x = torch.randn(2, CHANNELS, 7, 9)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", registered_names())
def test_torch_export(name):
    m = build(name)
    x = torch.randn(2, CHANNELS, 7, 9)
    program = torch.export.export(m, (x,))
    x2 = torch.randn(2, CHANNELS, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x2), m(x2), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", registered_names())
def test_onnx_export_matches_onnxruntime(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m = build(name)
    x = torch.randn(1, CHANNELS, 7, 9)
    path = tmp_path / f"{name}.onnx"
    size = {2: torch.export.Dim("height", min=2, max=256), 3: torch.export.Dim("width", min=2, max=256)}
    torch.onnx.export(m, (x,), str(path), dynamo=True, verbose=False, dynamic_shapes=(size,))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in (x, torch.randn(1, CHANNELS, 12, 17)):  # the exported graph takes any size
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), m(x), rtol=1e-3, atol=1e-4)


def test_a_registered_module_is_covered_by_the_contract(throwaway, tmp_path):
    assert throwaway in registered_names()
    cpu = torch.device("cpu")
    test_shape_and_finite(throwaway, (7, 13), cpu)
    test_batch_independence_in_eval(throwaway, cpu)
    test_not_identity_once_trained(throwaway, cpu)
    test_gradcheck_float64(throwaway)
    test_parameter_gradients_flow(throwaway, cpu)
    test_channels_last(throwaway, cpu)
    test_attention_weights(throwaway, cpu)
    test_wrong_rank_and_channels_raise(throwaway, cpu)
    test_empty_feature_map_raises_and_empty_batch_passes(throwaway, cpu)
    test_integer_input_raises(throwaway, cpu)
    test_low_precision_input_into_fp32_module_raises(throwaway, torch.bfloat16, cpu)
    test_torch_export(throwaway)
