"""Test utilities shared across the suite."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Channels of the attention tests: every registered mechanism runs at it with its default arguments.
CHANNELS = 64


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BatchNorm statistic random values (gammas non-zero).

    At initialisation residual attention is the identity (gamma = 0) and gates are constant, so
    tests on a freshly built module prove nothing.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (0.5 if p.dim() <= 1 else 1.0 / max(1, p[0].numel()) ** 0.5))
        if name.split(".")[-1] == "gamma":
            p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=p.dtype))
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error in the max norm: ``max|a - b| / max|b|``."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def gradients(
    f: Callable[[Tensor], Tensor],
    params: nn.Module,
    x: Tensor,
    upstream: Tensor | None = None,
    input_grad: bool = True,
    autocast: torch.dtype | None = None,
) -> dict[str, Tensor | None]:
    """Gradients of ``(f(x) * upstream).sum()`` (``f(x).sum()`` when ``upstream`` is ``None``):
    ``{"input": dL/dx, **{name: dL/dp for each parameter p of params}}``, ``"input"`` ``None`` when
    ``input_grad`` is ``False`` (``x`` then needs no gradient). ``autocast``: the forward runs
    under autocast to that dtype (the backward outside it, as in training)."""
    params.zero_grad(set_to_none=True)
    xi = x.detach().clone().requires_grad_(input_grad)
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        y = f(xi)
    (y if upstream is None else y * upstream).sum().backward()
    return {"input": xi.grad, **{name: p.grad for name, p in params.named_parameters()}}


def match_reference(
    m: nn.Module, reference: Callable[[Tensor], Tensor], shape: tuple[int, ...], rtol: float
) -> tuple[dict[str, Tensor | None], dict[str, Tensor | None]]:
    """``m`` against an independent ``reference`` formulation on a random float64 input of ``shape``:
    asserts the outputs agree up to ``rtol`` (:func:`rel_err`) and returns both sides' :func:`gradients`
    under one random upstream gradient, for the caller to compare."""
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(m(x), reference(x)) < rtol
    upstream = torch.randn(*shape, dtype=torch.float64)
    return gradients(m, m, x, upstream), gradients(reference, m, x, upstream)


def assert_gradients_close(got: dict[str, Tensor | None], want: dict[str, Tensor | None], **tolerances) -> None:
    """Two :func:`gradients` results agree entry by entry (``torch.testing.assert_close`` tolerances)."""
    assert got.keys() == want.keys()
    for name, g in got.items():
        torch.testing.assert_close(g, want[name], msg=name, **tolerances)


def assert_strongest_channel_maps(
    m: nn.Module, x: Tensor, weights: Tensor, points, key: str, title: Callable[[int, tuple], str]
) -> list:
    """``m.attention_maps(x, points)`` are keyed ``{key}_q0``, ``{key}_q1``, ... and show, for each point, the
    channel of ``weights`` ``(1, K, H, W)`` largest there, titled ``title(channel, point)``; returns the maps."""
    maps = m.attention_maps(x, points)
    assert [a.key for a in maps] == [f"{key}_q{i}" for i in range(len(points))]
    for amap, (r, c) in zip(maps, points):
        k = int(weights[0, :, r, c].argmax())
        assert amap.title == title(k, (r, c))
        torch.testing.assert_close(torch.from_numpy(amap.values).double(), weights[0, k], rtol=1e-6, atol=1e-12)
    return maps


def check_png(path, size: tuple[int, int], min_std: float = 0.0, min_colours: int = 10) -> None:
    """``path`` is a PNG of ``size`` = ``(width, height)`` pixels that is not blank: pixel std above
    ``min_std`` and more than ``min_colours`` distinct colours (more than a flat background)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert (pixels.shape[1], pixels.shape[0]) == size, path
    assert pixels.std() > min_std, path
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > min_colours, path


class LargestAllocation(TorchDispatchMode):
    """Records the largest storage any op produces, and how often each op runs."""

    def __init__(self):
        super().__init__()
        self.max_bytes = 0
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls[func.overloadpacket.__name__] += 1
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.max_bytes = max(self.max_bytes, t.untyped_storage().nbytes())
        return out


# Fused attention kernels (flash, memory-efficient) compute their softmax in fp32 accumulators
# whatever their inputs' dtype.
_FUSED_ATTENTION_OPS = (
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
)


class SoftmaxDtypes(TorchDispatchMode):
    """Records the dtype of every softmax op (forward and backward) run under it; a fused attention
    kernel's softmax counts as fp32."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ("_softmax", "softmax", "_softmax_backward_data"):
            self.dtypes.add(args[0].dtype)
        elif func.overloadpacket.__name__ in _FUSED_ATTENTION_OPS:
            self.dtypes.add(torch.float32)
        return func(*args, **(kwargs or {}))
