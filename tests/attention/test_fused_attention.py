"""The fused path of softmax_attention (F.scaled_dot_product_attention on value heads that share
one probability map) against the chunked path, its automatic choice, and fp16/bf16 safety with
large-magnitude features."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import gradients, randomize_, rel_err
from visattn.attention import _functional, non_local, pam
from visattn.attention._functional import fused_kernels_for, softmax_attention
from visattn.attention.non_local import NonLocal2d
from visattn.attention.pam import PositionAttention

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# (query/key width d, value channels C): d a multiple of 8 dividing C (PAM at C = 64, Non-local at
# C = 16), d padded to 8, C not a multiple of d (the last head padded), d = C.
WIDTHS = [(8, 64), (8, 8), (5, 17), (3, 40), (12, 30)]


class SdpaCalls(TorchDispatchMode):
    """Counts the scaled-dot-product-attention ops (any backend) run under it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in func.overloadpacket.__name__:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def inputs(d: int, c: int, device, dtype=torch.float64, n: int = 45, m: int = 30, magnitude: float = 1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, n, d, generator=gen, dtype=torch.float64) * magnitude
    k = torch.randn(2, m, d, generator=gen, dtype=torch.float64) * magnitude
    v = torch.randn(2, c, m, generator=gen, dtype=torch.float64)
    return [t.to(device, dtype).requires_grad_() for t in (q, k, v)]


def value_and_grads(q, k, v, residual: bool, **kwargs):
    extra = {}
    if residual:
        gen = torch.Generator().manual_seed(9)
        r = torch.randn(v.shape[0], v.shape[1], q.shape[1], generator=gen, dtype=v.dtype).to(v.device).requires_grad_()
        extra = {"gamma": torch.tensor([0.7], dtype=v.dtype, device=v.device, requires_grad=True), "residual": r}
    out = softmax_attention(q, k, v, **extra, **kwargs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype).to(out.device)
    leaves = (q, k, v, *extra.values())
    return out, torch.autograd.grad((out * upstream).sum(), leaves)


@pytest.mark.parametrize("d, c", WIDTHS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_fused_equals_chunked(d, c, residual, scale, device):
    q, k, v = inputs(d, c, device)
    with SdpaCalls() as sdpa:
        fused, fused_grads = value_and_grads(q, k, v, residual, scale=scale, fused=True)
    assert sdpa.calls >= 1
    chunked, chunked_grads = value_and_grads(q, k, v, residual, scale=scale, fused=False, chunk_size=7)
    assert fused.shape == chunked.shape == (2, c, 45)
    assert rel_err(fused, chunked) < 1e-12
    for got, want in zip(fused_grads, chunked_grads):
        assert rel_err(got, want) < 1e-12


def test_automatic_choice_is_chunked_on_cpu():
    q, k, v = inputs(8, 64, "cpu", torch.float32)
    assert fused_kernels_for(q, k, v) == []
    with SdpaCalls() as sdpa:
        softmax_attention(q, k, v).sum().backward()
    assert sdpa.calls == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_kernel_keeps_large_energies_finite(dtype, device):
    """Energies up to ~1e6, far above fp16's 65504: a kernel that forms them in fp16 returns inf/nan.
    The fused kernel (CPU flash, CUDA flash) accumulates them in fp32; it must match the float64
    computation on the same half-precision inputs to the output's rounding."""
    q, k, v = inputs(16, 64, device, dtype, magnitude=100.0, seed=4)
    want = softmax_attention(q.double(), k.double(), v.double(), fused=False)
    assert (q.double() @ k.double().transpose(1, 2)).abs().max().item() > 65504
    for fused in (True, False):
        got = softmax_attention(q, k, v, fused=fused)
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert rel_err(got, want) < 2 * torch.finfo(dtype).eps, fused


def large_features(device, seed=0) -> torch.Tensor:
    """Features whose query-key energies reach ~1e5 or more (fp16 tops out at 65504)."""
    return 150 * torch.randn(2, 64, 6, 8, generator=torch.Generator().manual_seed(seed)).to(device)


@contextlib.contextmanager
def modules_on_path(fused: bool):
    """PAM and Non-local forced onto one path of softmax_attention."""
    original = _functional.softmax_attention

    def forced(*args, **kwargs):
        return original(*args, **{**kwargs, "fused": fused})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pam, "softmax_attention", forced)
        patch.setattr(non_local, "softmax_attention", forced)
        yield


def test_pam_and_non_local_pass_scale_and_residual_to_the_fused_path():
    """Forced onto the fused path (the CPU's SDPA), both modules give their chunked values."""
    x = torch.randn(2, 64, 5, 7, dtype=torch.float64)
    for m in (randomize_(PositionAttention(64), seed=3).double(), randomize_(NonLocal2d(64), seed=3).double()):
        want = gradients(m, m, x)
        with modules_on_path(fused=True), SdpaCalls() as sdpa:
            got = gradients(m, m, x)
        assert sdpa.calls >= 2  # forward and backward
        floor = 1e-12 * max(g.abs().max() for g in want.values())  # key biases' gradients are 0 up to rounding
        for name, g in got.items():
            assert (g - want[name]).abs().max() <= floor + 1e-12 * want[name].abs().max(), name


@pytest.mark.parametrize("module", ["pam", "nonlocal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_with_large_features_equals_float32_energies(module, dtype, device):
    """Under fp16/bf16 autocast, with energies far above fp16's 65504, the fused path (the fused
    kernel on CUDA; forced onto the CPU's SDPA here) gives the values and gradients of the chunked
    path, whose energies and softmax are fp32, to half-precision tolerance, and nothing overflows."""
    m = randomize_(PositionAttention(64) if module == "pam" else NonLocal2d(64, use_scale=False), seed=2).to(device)
    x = large_features(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        q, k = (m.query_conv(x), m.key_conv(x)) if module == "pam" else (m.theta(x), m.phi(x))
        energies = q.flatten(2).transpose(1, 2).float() @ k.flatten(2).float()
    assert energies.abs().max().item() > 65504
    with modules_on_path(fused=False):
        want = gradients(lambda t: m(t).float(), m, x, autocast=dtype)
        y_want = m_under_autocast(m, x, dtype)
    fused = contextlib.nullcontext() if device.type == "cuda" else modules_on_path(fused=True)
    with fused, SdpaCalls() as sdpa:
        got = gradients(lambda t: m(t).float(), m, x, autocast=dtype)
        y_got = m_under_autocast(m, x, dtype)
    assert sdpa.calls >= 3  # training forward and backward, inference forward
    assert torch.isfinite(y_got).all() and rel_err(y_got, y_want) < 8 * torch.finfo(dtype).eps
    # Rows this peaked have softmax derivatives P(1 - P) ~ 0: the query and key gradients are
    # rounding noise on either path, only their finiteness is a property.
    saturated = ("query_conv", "key_conv", "theta", "phi")
    for name, g in got.items():
        assert torch.isfinite(g).all(), name
        if not name.startswith(saturated):
            assert rel_err(g, want[name]) < 0.02, name


def m_under_autocast(m, x, dtype):
    with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype):
        return m(x).float()


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("module", ["pam", "nonlocal"])
def test_cuda_training_takes_a_fused_kernel_and_equals_chunked(module, dtype):
    m = randomize_(PositionAttention(64) if module == "pam" else NonLocal2d(64), seed=1).cuda().to(dtype)
    x = torch.randn(2, 64, 12, 16, device="cuda", dtype=dtype)
    with torch.no_grad():
        q, k = (m.query_conv(x), m.key_conv(x)) if module == "pam" else (m.theta(x), m.phi(x))
        v = (m.value_conv if module == "pam" else m.g)(x)
    assert fused_kernels_for(q.flatten(2).transpose(1, 2), k.flatten(2).transpose(1, 2), v.flatten(2))
    with SdpaCalls() as sdpa:
        got = gradients(m, m, x)
    assert sdpa.calls >= 2  # forward and backward
    with modules_on_path(fused=False):
        want = gradients(m, m, x)
    tol = 2e-3 if dtype == torch.float32 else 2e-2  # fp32: the memory-efficient kernel may use TF32
    for name, g in got.items():
        assert rel_err(g.float(), want[name].float()) < tol, name


@CUDA
def test_cuda_export_takes_the_chunked_path():
    m = randomize_(PositionAttention(64), seed=1).cuda().eval()
    program = torch.export.export(m, (torch.randn(1, 64, 8, 8, device="cuda"),))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("scaled_dot_product" in op for op in ops)


@CUDA
@pytest.mark.parametrize("module", ["pam", "nonlocal"])
def test_cuda_training_never_holds_n_by_n(module):
    """N = 4096: the N x N fp32 map alone is 64 MiB; a fused training step stays far below it."""
    m = randomize_(PositionAttention(64) if module == "pam" else NonLocal2d(64), seed=1).cuda()
    x = torch.randn(1, 64, 64, 64, device="cuda", requires_grad=True)
    m(x).sum().backward()  # warm-up: kernels and workspaces
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    m(x).sum().backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 4096**2 * 4 // 4  # a quarter of the map
