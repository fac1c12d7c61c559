"""open-mmlab/mmsegmentation 1.2.2's decode heads, transcribed: PSPHead, ASPPHead,
DepthwiseSeparableASPPHead, ANNHead, OCRHead, GCHead, EMAHead, ISAHead, DNLHead and the FCNHead of
auxiliary and cascade heads.

https://github.com/open-mmlab/mmsegmentation (``mmseg/models/decode_heads/{psp,aspp,sep_aspp,ann,
ocr,fcn,gc,ema,isa,dnl}_head.py``, ``mmseg/models/utils/self_attention_block.py``,
``decode_head.py``), with mmcv 2.1's ``DepthwiseSeparableConvModule`` and ``ContextBlock``
(``mmcv/cnn/bricks``), and mmcv's ``ConvModule`` and ``NonLocal2d`` (DNL's base) from
:mod:`visattn._official.mmcv`.

Step by step as mmseg: the ``_transform_inputs`` index selection, every permute and
``.contiguous()`` copy, ``repeat``, in-place divisions and subtractions, the full ``sim_map`` of
``SelfAttentionBlock`` scaled after the matmul, the ``torch.tensor`` scale of DNL, ``no_grad`` EM
iterations, ISA's padding and group permutations, the ``resize`` wrapper (its alignment warning
left out). Kept to what these heads need: ``BaseDecodeHead``
keeps ``conv_seg``, ``dropout``, ``cls_seg``, the input selection and the ``conv_seg`` init, not
the losses or samplers. The mmseg classes ``ann_head.SelfAttentionBlock`` and
``isa_head.SelfAttentionBlock`` are named ``ANNSelfAttentionBlock`` and ``ISASelfAttentionBlock``
here, beside ``utils.SelfAttentionBlock`` which they subclass.

The attention parts of the heads, as the blocks visattn's modules compute, for ``COUNTERPARTS``:
``ContextBlock`` (``gc``), ``EMAUnit`` (``ema``: ``EMAHead.forward`` from ``ema_mid_conv`` to the
residual), ``ISABlock`` (``isa``: ``ISAHead.forward`` after ``in_conv``),
``DisentangledNonLocal2d`` (``dnl``).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import Counterpart, load_from
from .mmcv import ConvModule, NonLocal2d, constant_init, kaiming_init, normal_init

__all__ = [
    "DepthwiseSeparableConvModule", "resize", "BaseDecodeHead", "FCNHead", "PPM", "PSPHead",
    "ASPPModule", "ASPPHead", "DepthwiseSeparableASPPModule", "DepthwiseSeparableASPPHead", "SelfAttentionBlock",
    "PPMConcat", "ANNSelfAttentionBlock", "AFNB", "APNB", "ANNHead", "SpatialGatherModule", "ObjectAttentionBlock",
    "OCRHead", "ContextBlock", "GCHead", "EMAModule", "EMAUnit", "EMAHead", "ISASelfAttentionBlock", "ISABlock",
    "ISAHead", "DisentangledNonLocal2d", "DNLHead", "COUNTERPARTS",
]

NORM_CFG = dict(type="SyncBN", requires_grad=True)
ACT_CFG = dict(type="ReLU")


class DepthwiseSeparableConvModule(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, norm_cfg=None,
                 act_cfg=dict(type="ReLU"), dw_norm_cfg="default", dw_act_cfg="default", pw_norm_cfg="default",
                 pw_act_cfg="default", **kwargs):
        super().__init__()
        assert "groups" not in kwargs, "groups should not be specified"
        dw_norm_cfg = dw_norm_cfg if dw_norm_cfg != "default" else norm_cfg
        dw_act_cfg = dw_act_cfg if dw_act_cfg != "default" else act_cfg
        pw_norm_cfg = pw_norm_cfg if pw_norm_cfg != "default" else norm_cfg
        pw_act_cfg = pw_act_cfg if pw_act_cfg != "default" else act_cfg
        self.depthwise_conv = ConvModule(in_channels, in_channels, kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, groups=in_channels, norm_cfg=dw_norm_cfg,
                                         act_cfg=dw_act_cfg, **kwargs)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, norm_cfg=pw_norm_cfg, act_cfg=pw_act_cfg,
                                         **kwargs)

    def forward(self, x):
        x = self.depthwise_conv(x)
        x = self.pointwise_conv(x)
        return x


def resize(input, size=None, scale_factor=None, mode="nearest", align_corners=None, warning=True):
    return F.interpolate(input, size, scale_factor, mode, align_corners)


class BaseDecodeHead(nn.Module):
    def __init__(self, in_channels, channels, *, num_classes, dropout_ratio=0.1, conv_cfg=None, norm_cfg=NORM_CFG,
                 act_cfg=ACT_CFG, in_index=-1, input_transform=None, align_corners=False):
        super().__init__()
        assert input_transform in (None, "multiple_select")
        self.input_transform = input_transform
        self.in_index = in_index
        self.in_channels = in_channels
        self.channels = channels
        self.dropout_ratio = dropout_ratio
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self.align_corners = align_corners
        self.num_classes = num_classes
        self.out_channels = num_classes
        self.conv_seg = nn.Conv2d(channels, self.out_channels, kernel_size=1)
        if dropout_ratio > 0:
            self.dropout = nn.Dropout2d(dropout_ratio)
        else:
            self.dropout = None
        normal_init(self.conv_seg, std=0.01)  # init_cfg=dict(type='Normal', std=0.01, override=dict(name='conv_seg'))

    def _transform_inputs(self, inputs):
        if self.input_transform == "multiple_select":
            inputs = [inputs[i] for i in self.in_index]
        else:
            inputs = inputs[self.in_index]
        return inputs

    def cls_seg(self, feat):
        if self.dropout is not None:
            feat = self.dropout(feat)
        output = self.conv_seg(feat)
        return output


class FCNHead(BaseDecodeHead):
    def __init__(self, num_convs=2, kernel_size=3, concat_input=True, dilation=1, **kwargs):
        assert num_convs >= 1 and dilation > 0 and isinstance(dilation, int)
        self.num_convs = num_convs
        self.concat_input = concat_input
        self.kernel_size = kernel_size
        super().__init__(**kwargs)
        conv_padding = (kernel_size // 2) * dilation
        convs = []
        convs.append(ConvModule(self.in_channels, self.channels, kernel_size=kernel_size, padding=conv_padding,
                                dilation=dilation, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                                act_cfg=self.act_cfg))
        for i in range(num_convs - 1):
            convs.append(ConvModule(self.channels, self.channels, kernel_size=kernel_size, padding=conv_padding,
                                    dilation=dilation, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                                    act_cfg=self.act_cfg))
        self.convs = nn.Sequential(*convs)
        if self.concat_input:
            self.conv_cat = ConvModule(self.in_channels + self.channels, self.channels, kernel_size=kernel_size,
                                       padding=kernel_size // 2, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                                       act_cfg=self.act_cfg)

    def _forward_feature(self, inputs):
        x = self._transform_inputs(inputs)
        feats = self.convs(x)
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats

    def forward(self, inputs):
        output = self._forward_feature(inputs)
        output = self.cls_seg(output)
        return output


# ---- psp_head.py
class PPM(nn.ModuleList):
    def __init__(self, pool_scales, in_channels, channels, conv_cfg, norm_cfg, act_cfg, align_corners, **kwargs):
        super().__init__()
        self.pool_scales = pool_scales
        self.align_corners = align_corners
        self.in_channels = in_channels
        self.channels = channels
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        for pool_scale in pool_scales:
            self.append(nn.Sequential(
                nn.AdaptiveAvgPool2d(pool_scale),
                ConvModule(self.in_channels, self.channels, 1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                           act_cfg=self.act_cfg, **kwargs)))

    def forward(self, x):
        ppm_outs = []
        for ppm in self:
            ppm_out = ppm(x)
            upsampled_ppm_out = resize(ppm_out, size=x.size()[2:], mode="bilinear", align_corners=self.align_corners)
            ppm_outs.append(upsampled_ppm_out)
        return ppm_outs


class PSPHead(BaseDecodeHead):
    def __init__(self, pool_scales=(1, 2, 3, 6), **kwargs):
        super().__init__(**kwargs)
        assert isinstance(pool_scales, (list, tuple))
        self.pool_scales = pool_scales
        self.psp_modules = PPM(self.pool_scales, self.in_channels, self.channels, conv_cfg=self.conv_cfg,
                               norm_cfg=self.norm_cfg, act_cfg=self.act_cfg, align_corners=self.align_corners)
        self.bottleneck = ConvModule(self.in_channels + len(pool_scales) * self.channels, self.channels, 3,
                                     padding=1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                                     act_cfg=self.act_cfg)

    def _forward_feature(self, inputs):
        x = self._transform_inputs(inputs)
        psp_outs = [x]
        psp_outs.extend(self.psp_modules(x))
        psp_outs = torch.cat(psp_outs, dim=1)
        feats = self.bottleneck(psp_outs)
        return feats

    def forward(self, inputs):
        output = self._forward_feature(inputs)
        output = self.cls_seg(output)
        return output


# ---- aspp_head.py
class ASPPModule(nn.ModuleList):
    def __init__(self, dilations, in_channels, channels, conv_cfg, norm_cfg, act_cfg):
        super().__init__()
        self.dilations = dilations
        self.in_channels = in_channels
        self.channels = channels
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        for dilation in dilations:
            self.append(ConvModule(self.in_channels, self.channels, 1 if dilation == 1 else 3, dilation=dilation,
                                   padding=0 if dilation == 1 else dilation, conv_cfg=self.conv_cfg,
                                   norm_cfg=self.norm_cfg, act_cfg=self.act_cfg))

    def forward(self, x):
        aspp_outs = []
        for aspp_module in self:
            aspp_outs.append(aspp_module(x))
        return aspp_outs


class ASPPHead(BaseDecodeHead):
    def __init__(self, dilations=(1, 6, 12, 18), **kwargs):
        super().__init__(**kwargs)
        assert isinstance(dilations, (list, tuple))
        self.dilations = dilations
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            ConvModule(self.in_channels, self.channels, 1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                       act_cfg=self.act_cfg))
        self.aspp_modules = ASPPModule(dilations, self.in_channels, self.channels, conv_cfg=self.conv_cfg,
                                       norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.bottleneck = ConvModule((len(dilations) + 1) * self.channels, self.channels, 3, padding=1,
                                     conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def _forward_feature(self, inputs):
        x = self._transform_inputs(inputs)
        aspp_outs = [resize(self.image_pool(x), size=x.size()[2:], mode="bilinear",
                            align_corners=self.align_corners)]
        aspp_outs.extend(self.aspp_modules(x))
        aspp_outs = torch.cat(aspp_outs, dim=1)
        feats = self.bottleneck(aspp_outs)
        return feats

    def forward(self, inputs):
        output = self._forward_feature(inputs)
        output = self.cls_seg(output)
        return output


# ---- sep_aspp_head.py
class DepthwiseSeparableASPPModule(ASPPModule):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for i, dilation in enumerate(self.dilations):
            if dilation > 1:
                self[i] = DepthwiseSeparableConvModule(self.in_channels, self.channels, 3, dilation=dilation,
                                                       padding=dilation, norm_cfg=self.norm_cfg,
                                                       act_cfg=self.act_cfg)


class DepthwiseSeparableASPPHead(ASPPHead):
    def __init__(self, c1_in_channels, c1_channels, **kwargs):
        super().__init__(**kwargs)
        assert c1_in_channels >= 0
        self.aspp_modules = DepthwiseSeparableASPPModule(dilations=self.dilations, in_channels=self.in_channels,
                                                         channels=self.channels, conv_cfg=self.conv_cfg,
                                                         norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        if c1_in_channels > 0:
            self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1, conv_cfg=self.conv_cfg,
                                            norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        else:
            self.c1_bottleneck = None
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(self.channels + c1_channels, self.channels, 3, padding=1,
                                         norm_cfg=self.norm_cfg, act_cfg=self.act_cfg),
            DepthwiseSeparableConvModule(self.channels, self.channels, 3, padding=1, norm_cfg=self.norm_cfg,
                                         act_cfg=self.act_cfg))

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        aspp_outs = [resize(self.image_pool(x), size=x.size()[2:], mode="bilinear",
                            align_corners=self.align_corners)]
        aspp_outs.extend(self.aspp_modules(x))
        aspp_outs = torch.cat(aspp_outs, dim=1)
        output = self.bottleneck(aspp_outs)
        if self.c1_bottleneck is not None:
            c1_output = self.c1_bottleneck(inputs[0])
            output = resize(input=output, size=c1_output.shape[2:], mode="bilinear",
                            align_corners=self.align_corners)
            output = torch.cat([output, c1_output], dim=1)
        output = self.sep_bottleneck(output)
        output = self.cls_seg(output)
        return output


# ---- utils/self_attention_block.py
class SelfAttentionBlock(nn.Module):
    def __init__(self, key_in_channels, query_in_channels, channels, out_channels, share_key_query,
                 query_downsample, key_downsample, key_query_num_convs, value_out_num_convs, key_query_norm,
                 value_out_norm, matmul_norm, with_out, conv_cfg, norm_cfg, act_cfg):
        super().__init__()
        if share_key_query:
            assert key_in_channels == query_in_channels
        self.key_in_channels = key_in_channels
        self.query_in_channels = query_in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.share_key_query = share_key_query
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self.key_project = self.build_project(key_in_channels, channels, num_convs=key_query_num_convs,
                                              use_conv_module=key_query_norm, conv_cfg=conv_cfg,
                                              norm_cfg=norm_cfg, act_cfg=act_cfg)
        if share_key_query:
            self.query_project = self.key_project
        else:
            self.query_project = self.build_project(query_in_channels, channels, num_convs=key_query_num_convs,
                                                    use_conv_module=key_query_norm, conv_cfg=conv_cfg,
                                                    norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.value_project = self.build_project(key_in_channels, channels if with_out else out_channels,
                                                num_convs=value_out_num_convs, use_conv_module=value_out_norm,
                                                conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        if with_out:
            self.out_project = self.build_project(channels, out_channels, num_convs=value_out_num_convs,
                                                  use_conv_module=value_out_norm, conv_cfg=conv_cfg,
                                                  norm_cfg=norm_cfg, act_cfg=act_cfg)
        else:
            self.out_project = None
        self.query_downsample = query_downsample
        self.key_downsample = key_downsample
        self.matmul_norm = matmul_norm
        self.init_weights()

    def init_weights(self):
        if self.out_project is not None:
            if not isinstance(self.out_project, ConvModule):
                constant_init(self.out_project, 0)

    def build_project(self, in_channels, channels, num_convs, use_conv_module, conv_cfg, norm_cfg, act_cfg):
        if use_conv_module:
            convs = [ConvModule(in_channels, channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)]
            for _ in range(num_convs - 1):
                convs.append(ConvModule(channels, channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                        act_cfg=act_cfg))
        else:
            convs = [nn.Conv2d(in_channels, channels, 1)]
            for _ in range(num_convs - 1):
                convs.append(nn.Conv2d(channels, channels, 1))
        if len(convs) > 1:
            convs = nn.Sequential(*convs)
        else:
            convs = convs[0]
        return convs

    def forward(self, query_feats, key_feats):
        batch_size = query_feats.size(0)
        query = self.query_project(query_feats)
        if self.query_downsample is not None:
            query = self.query_downsample(query)
        query = query.reshape(*query.shape[:2], -1)
        query = query.permute(0, 2, 1).contiguous()

        key = self.key_project(key_feats)
        value = self.value_project(key_feats)
        if self.key_downsample is not None:
            key = self.key_downsample(key)
            value = self.key_downsample(value)
        key = key.reshape(*key.shape[:2], -1)
        value = value.reshape(*value.shape[:2], -1)
        value = value.permute(0, 2, 1).contiguous()

        sim_map = torch.matmul(query, key)
        if self.matmul_norm:
            sim_map = (self.channels**-.5) * sim_map
        sim_map = F.softmax(sim_map, dim=-1)

        context = torch.matmul(sim_map, value)
        context = context.permute(0, 2, 1).contiguous()
        context = context.reshape(batch_size, -1, *query_feats.shape[2:])
        if self.out_project is not None:
            context = self.out_project(context)
        return context


# ---- ann_head.py
class PPMConcat(nn.ModuleList):
    def __init__(self, pool_scales=(1, 3, 6, 8)):
        super().__init__([nn.AdaptiveAvgPool2d(pool_scale) for pool_scale in pool_scales])

    def forward(self, feats):
        ppm_outs = []
        for ppm in self:
            ppm_out = ppm(feats)
            ppm_outs.append(ppm_out.view(*feats.shape[:2], -1))
        concat_outs = torch.cat(ppm_outs, dim=2)
        return concat_outs


class ANNSelfAttentionBlock(SelfAttentionBlock):
    def __init__(self, low_in_channels, high_in_channels, channels, out_channels, share_key_query, query_scale,
                 key_pool_scales, conv_cfg, norm_cfg, act_cfg):
        key_psp = PPMConcat(key_pool_scales)
        if query_scale > 1:
            query_downsample = nn.MaxPool2d(kernel_size=query_scale)
        else:
            query_downsample = None
        super().__init__(key_in_channels=low_in_channels, query_in_channels=high_in_channels, channels=channels,
                         out_channels=out_channels, share_key_query=share_key_query,
                         query_downsample=query_downsample, key_downsample=key_psp, key_query_num_convs=1,
                         key_query_norm=True, value_out_num_convs=1, value_out_norm=False, matmul_norm=True,
                         with_out=True, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)


class AFNB(nn.Module):
    def __init__(self, low_in_channels, high_in_channels, channels, out_channels, query_scales, key_pool_scales,
                 conv_cfg, norm_cfg, act_cfg):
        super().__init__()
        self.stages = nn.ModuleList()
        for query_scale in query_scales:
            self.stages.append(ANNSelfAttentionBlock(
                low_in_channels=low_in_channels, high_in_channels=high_in_channels, channels=channels,
                out_channels=out_channels, share_key_query=False, query_scale=query_scale,
                key_pool_scales=key_pool_scales, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg))
        self.bottleneck = ConvModule(out_channels + high_in_channels, out_channels, 1, conv_cfg=conv_cfg,
                                     norm_cfg=norm_cfg, act_cfg=None)

    def forward(self, low_feats, high_feats):
        priors = [stage(high_feats, low_feats) for stage in self.stages]
        context = torch.stack(priors, dim=0).sum(dim=0)
        output = self.bottleneck(torch.cat([context, high_feats], 1))
        return output


class APNB(nn.Module):
    def __init__(self, in_channels, channels, out_channels, query_scales, key_pool_scales, conv_cfg, norm_cfg,
                 act_cfg):
        super().__init__()
        self.stages = nn.ModuleList()
        for query_scale in query_scales:
            self.stages.append(ANNSelfAttentionBlock(
                low_in_channels=in_channels, high_in_channels=in_channels, channels=channels,
                out_channels=out_channels, share_key_query=True, query_scale=query_scale,
                key_pool_scales=key_pool_scales, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg))
        self.bottleneck = ConvModule(2 * in_channels, out_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                     act_cfg=act_cfg)

    def forward(self, feats):
        priors = [stage(feats, feats) for stage in self.stages]
        context = torch.stack(priors, dim=0).sum(dim=0)
        output = self.bottleneck(torch.cat([context, feats], 1))
        return output


class ANNHead(BaseDecodeHead):
    def __init__(self, project_channels, query_scales=(1,), key_pool_scales=(1, 3, 6, 8), **kwargs):
        super().__init__(input_transform="multiple_select", **kwargs)
        assert len(self.in_channels) == 2
        low_in_channels, high_in_channels = self.in_channels
        self.project_channels = project_channels
        self.fusion = AFNB(low_in_channels=low_in_channels, high_in_channels=high_in_channels,
                           out_channels=high_in_channels, channels=project_channels, query_scales=query_scales,
                           key_pool_scales=key_pool_scales, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                           act_cfg=self.act_cfg)
        self.bottleneck = ConvModule(high_in_channels, self.channels, 3, padding=1, conv_cfg=self.conv_cfg,
                                     norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.context = APNB(in_channels=self.channels, out_channels=self.channels, channels=project_channels,
                            query_scales=query_scales, key_pool_scales=key_pool_scales, conv_cfg=self.conv_cfg,
                            norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def forward(self, inputs):
        low_feats, high_feats = self._transform_inputs(inputs)
        output = self.fusion(low_feats, high_feats)
        output = self.dropout(output)
        output = self.bottleneck(output)
        output = self.context(output)
        output = self.cls_seg(output)
        return output


# ---- ocr_head.py (an OCRHead follows an FCNHead in mmseg's CascadeEncoderDecoder)
class SpatialGatherModule(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, feats, probs):
        batch_size, num_classes, height, width = probs.size()
        channels = feats.size(1)
        probs = probs.view(batch_size, num_classes, -1)
        feats = feats.view(batch_size, channels, -1)
        # [batch_size, height*width, num_classes]
        feats = feats.permute(0, 2, 1)
        # [batch_size, channels, height*width]
        probs = F.softmax(self.scale * probs, dim=2)
        # [batch_size, channels, num_classes]
        ocr_context = torch.matmul(probs, feats)
        ocr_context = ocr_context.permute(0, 2, 1).contiguous().unsqueeze(3)
        return ocr_context


class ObjectAttentionBlock(SelfAttentionBlock):
    def __init__(self, in_channels, channels, scale, conv_cfg, norm_cfg, act_cfg):
        if scale > 1:
            query_downsample = nn.MaxPool2d(kernel_size=scale)
        else:
            query_downsample = None
        super().__init__(key_in_channels=in_channels, query_in_channels=in_channels, channels=channels,
                         out_channels=in_channels, share_key_query=False, query_downsample=query_downsample,
                         key_downsample=None, key_query_num_convs=2, key_query_norm=True, value_out_num_convs=1,
                         value_out_norm=True, matmul_norm=True, with_out=True, conv_cfg=conv_cfg,
                         norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.bottleneck = ConvModule(in_channels * 2, in_channels, 1, conv_cfg=self.conv_cfg,
                                     norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def forward(self, query_feats, key_feats):
        context = super().forward(query_feats, key_feats)
        output = self.bottleneck(torch.cat([context, query_feats], dim=1))
        if self.query_downsample is not None:
            output = resize(query_feats)
        return output


class OCRHead(BaseDecodeHead):
    def __init__(self, ocr_channels, scale=1, **kwargs):
        super().__init__(**kwargs)
        self.ocr_channels = ocr_channels
        self.scale = scale
        self.object_context_block = ObjectAttentionBlock(self.channels, self.ocr_channels, self.scale,
                                                         conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                                                         act_cfg=self.act_cfg)
        self.spatial_gather_module = SpatialGatherModule(self.scale)
        self.bottleneck = ConvModule(self.in_channels, self.channels, 3, padding=1, conv_cfg=self.conv_cfg,
                                     norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def forward(self, inputs, prev_output):
        x = self._transform_inputs(inputs)
        feats = self.bottleneck(x)
        context = self.spatial_gather_module(feats, prev_output)
        object_context = self.object_context_block(feats, context)
        output = self.cls_seg(object_context)
        return output


def last_zero_init(m):
    if isinstance(m, nn.Sequential):
        constant_init(m[-1], val=0)
    else:
        constant_init(m, val=0)


class ContextBlock(nn.Module):
    """mmcv's ``ContextBlock`` (GCNet)."""

    _abbr_ = "context_block"

    def __init__(self, in_channels, ratio, pooling_type="att", fusion_types=("channel_add",)):
        super().__init__()
        assert pooling_type in ["avg", "att"]
        assert isinstance(fusion_types, (list, tuple))
        valid_fusion_types = ["channel_add", "channel_mul"]
        assert all([f in valid_fusion_types for f in fusion_types])
        assert len(fusion_types) > 0, "at least one fusion should be used"
        self.in_channels = in_channels
        self.ratio = ratio
        self.planes = int(in_channels * ratio)
        self.pooling_type = pooling_type
        self.fusion_types = fusion_types
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
            self.softmax = nn.Softmax(dim=2)
        else:
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
        if "channel_add" in fusion_types:
            self.channel_add_conv = nn.Sequential(
                nn.Conv2d(self.in_channels, self.planes, kernel_size=1),
                nn.LayerNorm([self.planes, 1, 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(self.planes, self.in_channels, kernel_size=1))
        else:
            self.channel_add_conv = None
        if "channel_mul" in fusion_types:
            self.channel_mul_conv = nn.Sequential(
                nn.Conv2d(self.in_channels, self.planes, kernel_size=1),
                nn.LayerNorm([self.planes, 1, 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(self.planes, self.in_channels, kernel_size=1))
        else:
            self.channel_mul_conv = None
        self.reset_parameters()

    def reset_parameters(self):
        if self.pooling_type == "att":
            kaiming_init(self.conv_mask, mode="fan_in")
            self.conv_mask.inited = True
        if self.channel_add_conv is not None:
            last_zero_init(self.channel_add_conv)
        if self.channel_mul_conv is not None:
            last_zero_init(self.channel_mul_conv)

    def spatial_pool(self, x):
        batch, channel, height, width = x.size()
        if self.pooling_type == "att":
            input_x = x
            # [N, C, H * W]
            input_x = input_x.view(batch, channel, height * width)
            # [N, 1, C, H * W]
            input_x = input_x.unsqueeze(1)
            # [N, 1, H, W]
            context_mask = self.conv_mask(x)
            # [N, 1, H * W]
            context_mask = context_mask.view(batch, 1, height * width)
            # [N, 1, H * W]
            context_mask = self.softmax(context_mask)
            # [N, 1, H * W, 1]
            context_mask = context_mask.unsqueeze(-1)
            # [N, 1, C, 1]
            context = torch.matmul(input_x, context_mask)
            # [N, C, 1, 1]
            context = context.view(batch, channel, 1, 1)
        else:
            # [N, C, 1, 1]
            context = self.avg_pool(x)
        return context

    def forward(self, x):
        # [N, C, 1, 1]
        context = self.spatial_pool(x)
        out = x
        if self.channel_mul_conv is not None:
            # [N, C, 1, 1]
            channel_mul_term = torch.sigmoid(self.channel_mul_conv(context))
            out = out * channel_mul_term
        if self.channel_add_conv is not None:
            # [N, C, 1, 1]
            channel_add_term = self.channel_add_conv(context)
            out = out + channel_add_term
        return out


class GCHead(FCNHead):
    """mmseg's ``GCHead``: ``convs.0`` -> ``gc_block`` -> ``convs.1`` -> ``conv_cat`` -> ``cls_seg``."""

    def __init__(self, ratio=1 / 4.0, pooling_type="att", fusion_types=("channel_add",), **kwargs):
        super().__init__(num_convs=2, **kwargs)
        self.ratio = ratio
        self.pooling_type = pooling_type
        self.fusion_types = fusion_types
        self.gc_block = ContextBlock(
            in_channels=self.channels, ratio=self.ratio, pooling_type=self.pooling_type,
            fusion_types=self.fusion_types)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        output = self.convs[0](x)
        output = self.gc_block(output)
        output = self.convs[1](output)
        if self.concat_input:
            output = self.conv_cat(torch.cat([x, output], dim=1))
        output = self.cls_seg(output)
        return output


# --------------------------------------------------------------------------------------- EMANet


def reduce_mean(tensor):
    """Reduce mean when distributed training."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return tensor


class EMAModule(nn.Module):
    """mmseg's ``EMAModule``: the EM iterations and the moving average of the bases."""

    def __init__(self, channels, num_bases, num_stages, momentum):
        super().__init__()
        assert num_stages >= 1, "num_stages must be at least 1!"
        self.num_bases = num_bases
        self.num_stages = num_stages
        self.momentum = momentum
        bases = torch.zeros(1, channels, self.num_bases)
        bases.normal_(0, math.sqrt(2.0 / self.num_bases))
        # [1, channels, num_bases]
        bases = F.normalize(bases, dim=1, p=2)
        self.register_buffer("bases", bases)

    def forward(self, feats):
        batch_size, channels, height, width = feats.size()
        # [batch_size, channels, height*width]
        feats = feats.view(batch_size, channels, height * width)
        # [batch_size, channels, num_bases]
        bases = self.bases.repeat(batch_size, 1, 1)
        with torch.no_grad():
            for i in range(self.num_stages):
                # [batch_size, height*width, num_bases]
                attention = torch.einsum("bcn,bck->bnk", feats, bases)
                attention = F.softmax(attention, dim=2)
                # l1 norm
                attention_normed = F.normalize(attention, dim=1, p=1)
                # [batch_size, channels, num_bases]
                bases = torch.einsum("bcn,bnk->bck", feats, attention_normed)
                # l2 norm
                bases = F.normalize(bases, dim=1, p=2)
        feats_recon = torch.einsum("bck,bnk->bcn", bases, attention)
        feats_recon = feats_recon.view(batch_size, channels, height, width)
        if self.training:
            bases = bases.mean(dim=0, keepdim=True)
            bases = reduce_mean(bases)
            # l2 norm
            bases = F.normalize(bases, dim=1, p=2)
            self.bases = (1 - self.momentum) * self.bases + self.momentum * bases
        return feats_recon


def _ema_unit(self, feats):
    """``EMAHead.forward`` from ``identity = feats`` to the residual ReLU, verbatim."""
    identity = feats
    feats = self.ema_mid_conv(feats)
    recon = self.ema_module(feats)
    recon = F.relu(recon, inplace=True)
    recon = self.ema_out_conv(recon)
    output = F.relu(identity + recon, inplace=True)
    return output


class EMAUnit(nn.Module):
    """Not an mmseg class: ``EMAHead``'s ``ema_mid_conv``, ``ema_module`` and ``ema_out_conv`` with the
    part of its forward that uses them (the unit visattn's ``ema`` computes)."""

    def __init__(self, ema_channels, num_bases, num_stages, momentum, conv_cfg=None,
                 norm_cfg=dict(type="SyncBN", requires_grad=True)):
        super().__init__()
        _ema_convs(self, ema_channels, num_bases, num_stages, momentum, conv_cfg, norm_cfg)

    forward = _ema_unit


def _ema_convs(self, ema_channels, num_bases, num_stages, momentum, conv_cfg, norm_cfg):
    """``EMAHead.__init__``'s ``ema_module``, ``ema_mid_conv`` (frozen) and ``ema_out_conv``."""
    self.ema_module = EMAModule(ema_channels, num_bases, num_stages, momentum)
    # project (0, inf) -> (-inf, inf)
    self.ema_mid_conv = ConvModule(ema_channels, ema_channels, 1, conv_cfg=conv_cfg, norm_cfg=None, act_cfg=None)
    for param in self.ema_mid_conv.parameters():
        param.requires_grad = False
    self.ema_out_conv = ConvModule(ema_channels, ema_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                   act_cfg=None)


class EMAHead(BaseDecodeHead):
    """mmseg's ``EMAHead``: ``ema_in_conv`` -> EM attention unit -> ``bottleneck`` -> ``conv_cat`` -> ``cls_seg``."""

    def __init__(self, ema_channels, num_bases, num_stages, concat_input=True, momentum=0.1, **kwargs):
        super().__init__(**kwargs)
        self.ema_channels = ema_channels
        self.num_bases = num_bases
        self.num_stages = num_stages
        self.concat_input = concat_input
        self.momentum = momentum
        _ema_convs(self, ema_channels, num_bases, num_stages, momentum, self.conv_cfg, self.norm_cfg)
        self.ema_in_conv = ConvModule(
            self.in_channels, self.ema_channels, 3, padding=1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg)
        self.bottleneck = ConvModule(
            self.ema_channels, self.channels, 3, padding=1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg)
        if self.concat_input:
            self.conv_cat = ConvModule(
                self.in_channels + self.channels, self.channels, kernel_size=3, padding=1, conv_cfg=self.conv_cfg,
                norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        feats = self.ema_in_conv(x)
        output = _ema_unit(self, feats)
        output = self.bottleneck(output)
        if self.concat_input:
            output = self.conv_cat(torch.cat([x, output], dim=1))
        output = self.cls_seg(output)
        return output


# --------------------------------------------------------------------------------------- ISANet


class ISASelfAttentionBlock(SelfAttentionBlock):
    """``isa_head.py``'s ``SelfAttentionBlock``: two normed key/query convs, a plain value conv,
    ``output_project``."""

    def __init__(self, in_channels, channels, conv_cfg, norm_cfg, act_cfg):
        super().__init__(
            key_in_channels=in_channels, query_in_channels=in_channels, channels=channels, out_channels=in_channels,
            share_key_query=False, query_downsample=None, key_downsample=None, key_query_num_convs=2,
            key_query_norm=True, value_out_num_convs=1, value_out_norm=False, matmul_norm=True, with_out=False,
            conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.output_project = self.build_project(
            in_channels, in_channels, num_convs=1, use_conv_module=True, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
            act_cfg=act_cfg)

    def forward(self, x):
        context = super().forward(x, x)
        return self.output_project(context)


def _isa_relations(self, channels, isa_channels):
    """``ISAHead.__init__``'s ``global_relation``, ``local_relation`` and ``out_conv``."""
    self.global_relation = ISASelfAttentionBlock(
        channels, isa_channels, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
    self.local_relation = ISASelfAttentionBlock(
        channels, isa_channels, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
    self.out_conv = ConvModule(
        channels * 2, channels, 1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)


def _isa(self, x):
    """``ISAHead.forward`` from ``residual = x`` to ``out_conv``, verbatim."""
    residual = x

    n, c, h, w = x.size()
    loc_h, loc_w = self.down_factor  # size of local group in H- and W-axes
    glb_h, glb_w = math.ceil(h / loc_h), math.ceil(w / loc_w)
    pad_h, pad_w = glb_h * loc_h - h, glb_w * loc_w - w
    if pad_h > 0 or pad_w > 0:  # pad if the size is not divisible
        padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        x = F.pad(x, padding)

    # global relation
    x = x.view(n, c, glb_h, loc_h, glb_w, loc_w)
    # do permutation to gather global group
    x = x.permute(0, 3, 5, 1, 2, 4)  # (n, loc_h, loc_w, c, glb_h, glb_w)
    x = x.reshape(-1, c, glb_h, glb_w)
    # apply attention within each global group
    x = self.global_relation(x)  # (n * loc_h * loc_w, c, glb_h, glb_w)

    # local relation
    x = x.view(n, loc_h, loc_w, c, glb_h, glb_w)
    # do permutation to gather local group
    x = x.permute(0, 4, 5, 3, 1, 2)  # (n, glb_h, glb_w, c, loc_h, loc_w)
    x = x.reshape(-1, c, loc_h, loc_w)
    # apply attention within each local group
    x = self.local_relation(x)  # (n * glb_h * glb_w, c, loc_h, loc_w)

    # permute each pixel back to its original position
    x = x.view(n, glb_h, glb_w, c, loc_h, loc_w)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (n, c, glb_h, loc_h, glb_w, loc_w)
    x = x.reshape(n, c, glb_h * loc_h, glb_w * loc_w)
    if pad_h > 0 or pad_w > 0:  # remove padding
        x = x[:, :, pad_h // 2:pad_h // 2 + h, pad_w // 2:pad_w // 2 + w]

    x = self.out_conv(torch.cat([x, residual], dim=1))
    return x


class ISABlock(nn.Module):
    """Not an mmseg class: ``ISAHead``'s ``global_relation``, ``local_relation`` and ``out_conv`` with
    the part of its forward after ``in_conv`` (the block visattn's ``isa`` computes)."""

    def __init__(self, channels, isa_channels, down_factor=(8, 8), conv_cfg=None,
                 norm_cfg=dict(type="SyncBN", requires_grad=True), act_cfg=dict(type="ReLU")):
        super().__init__()
        self.down_factor = down_factor
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg
        _isa_relations(self, channels, isa_channels)

    forward = _isa


class ISAHead(BaseDecodeHead):
    """mmseg's ``ISAHead``: ``in_conv`` -> long-range then short-range attention -> ``out_conv`` -> ``cls_seg``."""

    def __init__(self, isa_channels, down_factor=(8, 8), **kwargs):
        super().__init__(**kwargs)
        self.down_factor = down_factor
        self.in_conv = ConvModule(
            self.in_channels, self.channels, 3, padding=1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg)
        _isa_relations(self, self.channels, isa_channels)

    def forward(self, inputs):
        x_ = self._transform_inputs(inputs)
        x = self.in_conv(x_)
        x = _isa(self, x)
        out = self.cls_seg(x)
        return out


# --------------------------------------------------------------------------------------- DNLNet


class DisentangledNonLocal2d(NonLocal2d):
    """mmseg's ``DisentangledNonLocal2d`` (embedded Gaussian; mmcv's ``NonLocal2d`` underneath)."""

    def __init__(self, *arg, temperature, **kwargs):
        super().__init__(*arg, **kwargs)
        self.temperature = temperature
        self.conv_mask = nn.Conv2d(self.in_channels, 1, kernel_size=1)

    def embedded_gaussian(self, theta_x, phi_x):
        """Embedded gaussian with temperature."""
        # NonLocal2d pairwise_weight: [N, HxW, HxW]
        pairwise_weight = torch.matmul(theta_x, phi_x)
        if self.use_scale:
            # theta_x.shape[-1] is `self.inter_channels`
            pairwise_weight /= torch.tensor(
                theta_x.shape[-1], dtype=torch.float, device=pairwise_weight.device
            ) ** torch.tensor(0.5, device=pairwise_weight.device)
        pairwise_weight /= torch.tensor(self.temperature, device=pairwise_weight.device)
        pairwise_weight = pairwise_weight.softmax(dim=-1)
        return pairwise_weight

    def forward(self, x):
        # x: [N, C, H, W]
        n = x.size(0)
        g_x, theta_x, phi_x = self.projections(x)

        # subtract mean
        theta_x -= theta_x.mean(dim=-2, keepdim=True)
        phi_x -= phi_x.mean(dim=-1, keepdim=True)

        pairwise_func = getattr(self, self.mode)
        # pairwise_weight: [N, HxW, HxW]
        pairwise_weight = pairwise_func(theta_x, phi_x)

        # y: [N, HxW, C]
        y = torch.matmul(pairwise_weight, g_x)
        # y: [N, C, H, W]
        y = y.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, *x.size()[2:])

        # unary_mask: [N, 1, HxW]
        unary_mask = self.conv_mask(x)
        unary_mask = unary_mask.view(n, 1, -1)
        unary_mask = unary_mask.softmax(dim=-1)
        # unary_x: [N, 1, C]
        unary_x = torch.matmul(unary_mask, g_x)
        # unary_x: [N, C, 1, 1]
        unary_x = unary_x.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, 1, 1)

        output = x + self.conv_out(y + unary_x)

        return output


class DNLHead(FCNHead):
    """mmseg's ``DNLHead``: ``convs.0`` -> ``dnl_block`` -> ``convs.1`` -> ``conv_cat`` -> ``cls_seg``."""

    def __init__(self, reduction=2, use_scale=True, mode="embedded_gaussian", temperature=0.05, **kwargs):
        super().__init__(num_convs=2, **kwargs)
        self.reduction = reduction
        self.use_scale = use_scale
        self.mode = mode
        self.temperature = temperature
        self.dnl_block = DisentangledNonLocal2d(
            in_channels=self.channels, reduction=self.reduction, use_scale=self.use_scale, conv_cfg=self.conv_cfg,
            norm_cfg=self.norm_cfg, mode=self.mode, temperature=self.temperature)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        output = self.convs[0](x)
        output = self.dnl_block(output)
        output = self.convs[1](output)
        if self.concat_input:
            output = self.conv_cat(torch.cat([x, output], dim=1))
        output = self.cls_seg(output)
        return output


# ------------------------------------------------------------------------------------ COUNTERPARTS


def _context_block(m: nn.Module) -> nn.Module:
    return load_from(ContextBlock(m.channels, m.ratio, m.pooling_type, m.fusion_types), m)


def _ema_unit_of(m: nn.Module) -> nn.Module:
    official = EMAUnit(m.channels, m.num_bases, m.num_stages, m.momentum)
    state = {("ema_module.bases" if k == "bases" else k): v for k, v in m.state_dict().items()}
    official.load_state_dict(state)
    param = next(m.parameters())
    return official.to(param.device, param.dtype).train(m.training)


def _isa_block(m: nn.Module) -> nn.Module:
    return load_from(ISABlock(m.channels, m.isa_channels, m.down_factor), m)


def _dnl(m: nn.Module) -> nn.Module:
    norm_cfg = None if m.norm_layer is None else dict(type="BN")
    official = DisentangledNonLocal2d(
        m.channels, reduction=m.reduction, use_scale=m.use_scale, norm_cfg=norm_cfg, temperature=m.temperature)
    return load_from(official, m)


COUNTERPARTS = {
    "gc": Counterpart(_context_block),
    "ema": Counterpart(_ema_unit_of),
    "isa": Counterpart(_isa_block),
    "dnl": Counterpart(_dnl),
}
