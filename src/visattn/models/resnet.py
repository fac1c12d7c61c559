"""ResNet-50/101 with attention: SE, CBAM and SGE gates in every bottleneck, BAM between stages.

Papers:
- SE: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, https://arxiv.org/abs/1709.01507
- CBAM: Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018,
  https://arxiv.org/abs/1807.06521
- BAM: Park et al., "BAM: Bottleneck Attention Module", BMVC 2018, https://arxiv.org/abs/1807.06514
- SGE: Li et al., "Spatial Group-wise Enhance", 2019, https://arxiv.org/abs/1905.09646

The layout and the parameter names are torchvision's ResNet (``conv1``, ``bn1``, ``layer1..4``,
bottleneck ``conv1..3``/``bn1..3``/``downsample.0/1``, ``fc``), which is also the layout of the
authors' code: Jongchan/attention-module ``MODELS/model_resnet.py`` (BAM, CBAM) and
implus/PytorchInsight ``resnet_sge.py`` (SGE). A block gate sits after ``bn3``, before the residual
addition, under the attribute named like the mechanism (``se``, ``cbam``, ``sge``: the official
names, and timm's for SE); a stage attention sits after stages 1-3 as ``bam1``, ``bam2``, ``bam3``.
So the authors' checkpoints load with :func:`visattn.load_official` without renaming, and
``create_model(name, pretrained=True)`` downloads the ones published as a direct file (each
builder's docstring says where its weights are).

Differences from the official code:
- Global average pooling before ``fc`` (Jongchan's code uses ``AvgPool2d(7)``, equal at 224×224
  but wrong for other input sizes).
- BAM pools globally (the official channel gate uses an H×H window, wrong when H != W); at square
  inputs the two agree.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..attention import create_attention
from .registry import Weights, register_model

__all__ = [
    "Bottleneck",
    "ResNet",
    "bam_resnet50",
    "bam_resnet101",
    "sge_resnet50",
    "se_resnet50",
    "cbam_resnet50",
]

# Where the authors publish their weights; the ResNet-50 ones are direct downloads.
_JONGCHAN = "https://github.com/Jongchan/attention-module"
_BAM50 = Weights(_JONGCHAN, "https://www.dropbox.com/s/esw0m8e3cjg7ex4/RESNET50_IMAGENET_BAM_best.pth.tar?dl=1")
_CBAM50 = Weights(_JONGCHAN, "https://www.dropbox.com/s/bt6zty02h9ibufi/RESNET50_CBAM_new_name_wrap.pth?dl=1")
_PYTORCHINSIGHT = Weights("https://github.com/implus/PytorchInsight (Baidu Drive links in its README)")
_TIMM_SE = Weights("timm (timm.create_model('seresnet50', pretrained=True).state_dict(), saved to a file)")


class Bottleneck(nn.Module):
    """ResNet bottleneck (torchvision v1.5: stride on the 3×3 conv) with an optional attention gate.

    ``(B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride)``.

    Args:
        inplanes: input channels.
        planes: width of the 3×3 conv; the block outputs ``4 * planes`` channels.
        stride: stride of the 3×3 conv (and of ``downsample``).
        downsample: projection of the identity when shape changes (``None``: identity).
        attn: name of a registered attention module (see :func:`visattn.list_attentions`) applied
            to the residual branch after ``bn3``, before the addition; stored under that name
            (``se``, ``cbam``, ``sge``, ...). ``None``: plain ResNet block.
        attn_kwargs: keyword arguments for the attention module.
        conv2: builds the middle conv from ``(planes, stride)`` (``None``: the 3×3 conv).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        attn: str | None = None,
        attn_kwargs: dict | None = None,
        conv2: Callable[[int, int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        if conv2 is None:
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        else:
            self.conv2 = conv2(planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.attn_name = attn
        if attn is not None:
            # registered under the mechanism's own name: the official checkpoints' key names
            self.add_module(attn, create_attention(attn, width, **(attn_kwargs or {})))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attn_name is not None:
            out = getattr(self, self.attn_name)(out)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with a torchvision stem (7×7/2 conv, BN, ReLU, 3×3/2 max-pool), four stages, global
    average pooling and a linear classifier: ``(B, 3, H, W) -> (B, num_classes)``.

    Args:
        layers: blocks per stage, ``(3, 4, 6, 3)`` for ResNet-50, ``(3, 4, 23, 3)`` for ResNet-101.
        num_classes: classifier outputs.
        block: the residual block class, called as
            ``block(inplanes, planes, stride, downsample, **block_kwargs)``, with ``expansion``.
        block_kwargs: extra arguments of every block (for :class:`Bottleneck`: ``attn``,
            ``attn_kwargs``, ``conv2``).
        stage_attn: name of a registered attention module applied after stages 1, 2 and 3, stored
            as ``{stage_attn}1..3`` (``bam1``, ``bam2``, ``bam3`` as in BAM-ResNet).
        stage_attn_kwargs: keyword arguments for the stage attention modules.
        zero_init_residual: zero the last BN of each block, so each block starts as the identity
            (torchvision's option; off in the official BAM/CBAM/SGE/EPSANet code).

    Initialisation as the official code: convs Kaiming-normal (fan-out, ReLU gain), BatchNorm
    weight 1 and bias 0; then modules built of layers that define their own ``reset_parameters``
    re-apply it (CBAM: its spatial gate's BN starts at 0, as in Jongchan's code).
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int = 1000,
        block: type[nn.Module] = Bottleneck,
        block_kwargs: dict | None = None,
        stage_attn: str | None = None,
        stage_attn_kwargs: dict | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet: layers must give 4 stage depths, got {tuple(layers)!r}")
        self.num_classes = num_classes
        self.stage_attn = stage_attn
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        block_kwargs = block_kwargs or {}
        self.layer1 = self._make_layer(block, 64, layers[0], 1, block_kwargs)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, block_kwargs)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, block_kwargs)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, block_kwargs)
        if stage_attn is not None:
            for i, planes in enumerate((64, 128, 256), start=1):
                self.add_module(
                    f"{stage_attn}{i}",
                    create_attention(stage_attn, planes * block.expansion, **(stage_attn_kwargs or {})),
                )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 512 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int, kwargs: dict) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, **kwargs)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, **kwargs) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @torch.no_grad()
    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            # A module built of layers with an initialisation of its own (CBAM) re-applies it over the above.
            if hasattr(m, "reset_parameters") and next(m.children(), None) is not None:
                m.reset_parameters()
        if zero_init_residual:
            for m in self.modules():
                if isinstance(getattr(m, "bn3", None), nn.BatchNorm2d):
                    nn.init.zeros_(m.bn3.weight)

    def convert_official_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Apply the converters of the attention modules that define one to their own keys.

        The official key names are ours; this only lets a module vet its weights, e.g. BAM refuses
        the released BAM weights unless built with ``combine="product"``.
        """
        state = dict(state_dict)
        done: list[str] = []
        for name, module in self.named_modules():
            convert = getattr(module, "convert_official_state_dict", None)
            if not name or convert is None or any(name.startswith(d) for d in done):
                continue
            prefix = f"{name}."
            done.append(prefix)
            own = {k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix)}
            state.update({prefix + k: v for k, v in convert(own).items()})
        return state

    def forward_features(self, x: Tensor) -> Tensor:
        """The stage-4 feature map, ``(B, num_features, H / 32, W / 32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            x = stage(x)
            if self.stage_attn is not None and i < 4:
                x = getattr(self, f"{self.stage_attn}{i}")(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _gate(attn: str, **attn_kwargs) -> dict:
    """:class:`Bottleneck` arguments for the block gate ``attn``."""
    return {"attn": attn, "attn_kwargs": attn_kwargs}


@register_model(weights=_BAM50)
def bam_resnet50(num_classes: int = 1000, combine: str = "product", **kwargs) -> ResNet:
    """BAM-ResNet-50: BAM(r=16, dilation 4) after stages 1-3 (``bam1..3`` on 256/512/1024 channels).

    ``combine="product"`` (default) is what the authors' code computes,
    ``1 + sigmoid(Mc * Ms)``, and what their released weights need; ``combine="sum"`` is the
    paper's ``1 + sigmoid(Mc + Ms)``. 25,915,099 parameters at 1000 classes (ResNet-50 + 358,067),
    as the official code.

    ``pretrained=True`` downloads the authors' release (Jongchan/attention-module README,
    76.86 top-1 after 90 epochs); a path loads a local copy.
    """
    return ResNet((3, 4, 6, 3), num_classes, stage_attn="bam", stage_attn_kwargs={"combine": combine}, **kwargs)


@register_model(weights=_PYTORCHINSIGHT)
def bam_resnet101(num_classes: int = 1000, combine: str = "product", **kwargs) -> ResNet:
    """BAM-ResNet-101: as :func:`bam_resnet50` on ResNet-101; 44,907,227 parameters at 1000 classes.

    Weights: PytorchInsight's release (same layout, 78.22 top-1) is on Baidu Drive only, so
    ``pretrained=True`` raises; download it and pass the path (or use ``load_official``).
    """
    return ResNet((3, 4, 23, 3), num_classes, stage_attn="bam", stage_attn_kwargs={"combine": combine}, **kwargs)


@register_model(weights=_PYTORCHINSIGHT)
def sge_resnet50(num_classes: int = 1000, groups: int = 64, **kwargs) -> ResNet:
    """SGE-ResNet-50: SGE(64 groups) after ``bn3`` of every bottleneck (``layerX.Y.sge``).

    25,559,080 parameters at 1000 classes (ResNet-50 + 16 blocks × 2 × 64). The authors' weights
    (implus/PytorchInsight, 77.584 top-1) are on Baidu Drive only, so ``pretrained=True`` raises;
    download them and pass the path (or use ``load_official``).
    """
    return ResNet((3, 4, 6, 3), num_classes, block_kwargs=_gate("sge", groups=groups), **kwargs)


@register_model(weights=_TIMM_SE)
def se_resnet50(num_classes: int = 1000, reduction: int = 16, **kwargs) -> ResNet:
    """SE-ResNet-50: SE(r=16, 1×1 convs with bias) after ``bn3`` of every bottleneck (``layerX.Y.se``).

    28,088,024 parameters at 1000 classes, the SE paper's figure. The keys are timm's
    ``seresnet50`` (``se.fc1``/``se.fc2``), so timm's weights load as they are; the authors
    released Caffe models only, so ``pretrained`` takes a path (e.g. a saved
    ``timm.create_model("seresnet50", pretrained=True).state_dict()``) and ``True`` raises.
    """
    return ResNet((3, 4, 6, 3), num_classes, block_kwargs=_gate("se", reduction=reduction), **kwargs)


@register_model(weights=_CBAM50)
def cbam_resnet50(num_classes: int = 1000, reduction: int = 16, **kwargs) -> ResNet:
    """CBAM-ResNet-50: CBAM(r=16, 7×7 spatial conv) after ``bn3`` of every bottleneck (``layerX.Y.cbam``).

    28,089,624 parameters at 1000 classes (SE-ResNet-50 + 16 × 100 for the spatial gates; the
    CBAM paper reports 28.09M). ``pretrained=True`` downloads the authors' release
    (Jongchan/attention-module README, 77.622 top-1); a path loads a local copy.
    """
    return ResNet((3, 4, 6, 3), num_classes, block_kwargs=_gate("cbam", reduction=reduction), **kwargs)
