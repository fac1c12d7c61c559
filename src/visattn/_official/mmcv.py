"""open-mmlab/mmcv ``NonLocal2d`` and ``ConvModule`` (``mmcv/cnn/bricks/{non_local,conv_module}.py``), transcribed.

https://github.com/open-mmlab/mmcv ; the Non-local block of mmseg's ``NLHead`` (Wang et al.,
"Non-local Neural Networks", CVPR 2018, https://arxiv.org/abs/1711.07971).

Step by step as mmcv: the ``B x N x N`` ``pairwise_weight``, divided in place by
``theta_x.shape[-1] ** 0.5``, its softmax, the permutes and ``.contiguous()`` copies,
``sub_sample`` wrapping ``g`` and ``phi`` in ``nn.Sequential`` with a 2x2 max-pool. Kept to what
the embedded Gaussian block and mmseg's heads (:mod:`visattn._official.mmseg`) need: ``ConvModule``
(``mmcv/cnn/bricks/conv_module.py``) is conv -> optional norm named ``bn`` (BN / SyncBN configs,
built as ``nn.BatchNorm2d``) -> optional ReLU (``activate``); the other pairwise modes
(``gaussian``, ``dot_product``, ``concatenation``) are left out.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import Counterpart

__all__ = ["ConvModule", "NonLocal2d", "NonLocal2dWithSDPA", "COUNTERPARTS"]


def constant_init(module, val, bias=0):
    if hasattr(module, "weight") and module.weight is not None:
        nn.init.constant_(module.weight, val)
    if hasattr(module, "bias") and module.bias is not None:
        nn.init.constant_(module.bias, bias)


def normal_init(module, mean=0, std=1, bias=0):
    if hasattr(module, "weight") and module.weight is not None:
        nn.init.normal_(module.weight, mean, std)
    if hasattr(module, "bias") and module.bias is not None:
        nn.init.constant_(module.bias, bias)


def kaiming_init(module, a=0, mode="fan_out", nonlinearity="relu", bias=0, distribution="normal"):
    assert distribution in ["uniform", "normal"]
    if hasattr(module, "weight") and module.weight is not None:
        if distribution == "uniform":
            nn.init.kaiming_uniform_(module.weight, a=a, mode=mode, nonlinearity=nonlinearity)
        else:
            nn.init.kaiming_normal_(module.weight, a=a, mode=mode, nonlinearity=nonlinearity)
    if hasattr(module, "bias") and module.bias is not None:
        nn.init.constant_(module.bias, bias)


class ConvModule(nn.Module):
    """mmcv's ``ConvModule``, order ('conv', 'norm', 'act'), BN/SyncBN norm named ``bn``, ReLU ``activate``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias="auto", conv_cfg=None, norm_cfg=None, act_cfg=dict(type="ReLU"), inplace=True):
        super().__init__()
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self.with_norm = norm_cfg is not None
        self.with_activation = act_cfg is not None
        if bias == "auto":
            bias = not self.with_norm
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=bias)
        if self.with_norm:
            assert norm_cfg["type"] in ("BN", "SyncBN"), norm_cfg
            self.norm_name = "bn"
            self.add_module(self.norm_name, nn.BatchNorm2d(out_channels))
        if self.with_activation:
            assert act_cfg["type"] == "ReLU", act_cfg
            self.activate = nn.ReLU(inplace=inplace)
        self.init_weights()

    @property
    def norm(self):
        return getattr(self, self.norm_name)

    def init_weights(self):
        kaiming_init(self.conv, a=0, nonlinearity="relu")
        if self.with_norm:
            constant_init(self.norm, 1, bias=0)

    def forward(self, x):
        x = self.conv(x)
        if self.with_norm:
            x = self.norm(x)
        if self.with_activation:
            x = self.activate(x)
        return x


class _NonLocalNd(nn.Module):
    def __init__(self, in_channels, reduction=2, use_scale=True, conv_cfg=None, norm_cfg=None,
                 mode="embedded_gaussian", **kwargs):
        super(_NonLocalNd, self).__init__()
        self.in_channels = in_channels
        self.reduction = reduction
        self.use_scale = use_scale
        self.inter_channels = max(in_channels // reduction, 1)
        self.mode = mode

        if mode != "embedded_gaussian":
            raise ValueError(f"this transcription has only the 'embedded_gaussian' mode, got {mode}")

        # g, theta, phi are defaulted as `nn.ConvNd`.
        # Here we use ConvModule for potential usage.
        self.g = ConvModule(self.in_channels, self.inter_channels, kernel_size=1, conv_cfg=conv_cfg, act_cfg=None)
        self.conv_out = ConvModule(
            self.inter_channels, self.in_channels, kernel_size=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=None
        )
        self.theta = ConvModule(self.in_channels, self.inter_channels, kernel_size=1, conv_cfg=conv_cfg, act_cfg=None)
        self.phi = ConvModule(self.in_channels, self.inter_channels, kernel_size=1, conv_cfg=conv_cfg, act_cfg=None)

        self.init_weights(**kwargs)

    def init_weights(self, std=0.01, zeros_init=True):
        for m in [self.g, self.theta, self.phi]:
            normal_init(m.conv, std=std)
        if zeros_init:
            if self.conv_out.norm_cfg is None:
                constant_init(self.conv_out.conv, 0)
            else:
                constant_init(self.conv_out.norm, 0)
        else:
            if self.conv_out.norm_cfg is None:
                normal_init(self.conv_out.conv, std=std)
            else:
                normal_init(self.conv_out.norm, std=std)

    def embedded_gaussian(self, theta_x, phi_x):
        # NonLocal2d pairwise_weight: [N, HxW, HxW]
        pairwise_weight = torch.matmul(theta_x, phi_x)
        if self.use_scale:
            # theta_x.shape[-1] is `self.inter_channels`
            pairwise_weight /= theta_x.shape[-1] ** 0.5
        pairwise_weight = pairwise_weight.softmax(dim=-1)
        return pairwise_weight

    def projections(self, x):
        """``g_x`` [N, HxW, C], ``theta_x`` [N, HxW, C], ``phi_x`` [N, C, HxW]: the first lines of mmcv's
        ``forward`` (and of mmseg's ``DisentangledNonLocal2d.forward``), kept in one place."""
        n = x.size(0)

        # NonLocal2d g_x: [N, HxW, C]
        g_x = self.g(x).view(n, self.inter_channels, -1)
        g_x = g_x.permute(0, 2, 1)

        # NonLocal2d theta_x: [N, HxW, C]
        theta_x = self.theta(x).view(n, self.inter_channels, -1)
        theta_x = theta_x.permute(0, 2, 1)

        # NonLocal2d phi_x: [N, C, HxW]
        phi_x = self.phi(x).view(n, self.inter_channels, -1)
        return g_x, theta_x, phi_x

    def forward(self, x):
        n = x.size(0)
        g_x, theta_x, phi_x = self.projections(x)

        pairwise_func = getattr(self, self.mode)
        # NonLocal2d pairwise_weight: [N, HxW, HxW]
        pairwise_weight = pairwise_func(theta_x, phi_x)

        # NonLocal2d y: [N, HxW, C]
        y = torch.matmul(pairwise_weight, g_x)
        # NonLocal2d y: [N, C, H, W]
        y = y.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, *x.size()[2:])

        output = x + self.conv_out(y)

        return output


class NonLocal2d(_NonLocalNd):
    """2D Non-local module (``sub_sample``: max-pool ``g`` and ``phi`` 2x2)."""

    _abbr_ = "nonlocal_block"

    def __init__(self, in_channels, sub_sample=False, conv_cfg=dict(type="Conv2d"), **kwargs):
        super(NonLocal2d, self).__init__(in_channels, conv_cfg=conv_cfg, **kwargs)

        self.sub_sample = sub_sample

        if sub_sample:
            max_pool_layer = nn.MaxPool2d(kernel_size=(2, 2))
            self.g = nn.Sequential(self.g, max_pool_layer)
            self.phi = nn.Sequential(self.phi, max_pool_layer)


class NonLocal2dWithSDPA(NonLocal2d):
    """Not mmcv's code: ``NonLocal2d`` with ``pairwise_weight`` and its weighted sum done by
    ``F.scaled_dot_product_attention`` (scale ``1/sqrt(C')``), i.e. what one writes with PyTorch's
    fused attention. Same parameters and values."""

    def forward(self, x):
        n = x.size(0)
        g_x = self.g(x).flatten(2).transpose(1, 2)[:, None]  # (N, 1, M, C')
        theta_x = self.theta(x).flatten(2).transpose(1, 2)[:, None]
        phi_x = self.phi(x).flatten(2).transpose(1, 2)[:, None]
        scale = theta_x.shape[-1] ** -0.5 if self.use_scale else 1.0
        y = torch.nn.functional.scaled_dot_product_attention(theta_x, phi_x, g_x, scale=scale)[:, 0]
        y = y.transpose(1, 2).reshape(n, self.inter_channels, *x.size()[2:])
        return x + self.conv_out(y)


def _non_local(m: nn.Module, cls: type[NonLocal2d] = NonLocal2d) -> nn.Module:
    norm_cfg = None if m.norm_layer is None else dict(type="BN")
    official = cls(
        m.channels, sub_sample=m.sub_sample, reduction=m.reduction, use_scale=m.use_scale, norm_cfg=norm_cfg
    )
    weight = next(m.parameters())
    official.to(weight.device, weight.dtype).load_state_dict(m.state_dict())
    return official.train(m.training)


COUNTERPARTS = {"nonlocal": Counterpart(_non_local, sdpa=lambda m: _non_local(m, NonLocal2dWithSDPA))}
