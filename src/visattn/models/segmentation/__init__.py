"""Segmentors = dilated timm encoder + head (+ auxiliary FCN head) + bilinear upsampling to the input size.

One file per network, each with its head, the import of its authors' checkpoints, its generic
builder (any timm encoder through ``encoder=``) and its paper variants on the authors' backbone
layouts:

====================  =================  ==================================================================
``fcn.py``            ``fcn``            ``fcn_r50_d8``, ``fcn_r101_d8``: the dilated-FCN baseline
``danet.py``          ``danet``          ``danet_r50_d8``, ``danet_r101_d8`` (the released DANet101)
``ccnet.py``          ``ccnet``          ``ccnet_r50_d8``, ``ccnet_r101_d8`` (CCNet's deep-stem ResNets)
``flanet.py``         ``flanet``         ``flanet_r50_d8``, ``flanet_r101_d8`` (FLANet's deep-stem ResNets)
``attnet.py``         ``attnet``         any registered attention module as the head
``nlnet.py``          ``nlnet``          ``nlnet_r50_d8``, ``nlnet_r101_d8``: mmseg's NLHead (ResNetV1c)
``pspnet.py``         ``pspnet``         ``pspnet_r50_d8``, ``pspnet_r101_d8``: mmseg's PSPHead
``deeplabv3.py``      ``deeplabv3``      ``deeplabv3_r50_d8``, ``deeplabv3_r101_d8``: mmseg's ASPPHead
``deeplabv3plus.py``  ``deeplabv3plus``  ``deeplabv3plus_r50_d8``, ``_r101_d8``: separable ASPP + decoder
``ann.py``            ``ann``            ``ann_r50_d8``, ``ann_r101_d8``: mmseg's ANNHead (AFNB, APNB)
``ocrnet.py``         ``ocrnet``         ``ocrnet_r50_d8``, ``ocrnet_r101_d8``: mmseg's FCN + OCR cascade
``gcnet.py``          ``gcnet``          ``gcnet_r50_d8``, ``gcnet_r101_d8``: mmseg's GCHead
``emanet.py``         ``emanet``         ``emanet_r50_d8``, ``emanet_r101_d8``: mmseg's EMAHead
``isanet.py``         ``isanet``         ``isanet_r50_d8``, ``isanet_r101_d8``: mmseg's ISAHead
``dnlnet.py``         ``dnlnet``         ``dnlnet_r50_d8``, ``dnlnet_r101_d8``: mmseg's DNLHead
====================  =================  ==================================================================

``base.py`` holds :class:`Segmentor`, :func:`build_segmentor` (the arguments every builder
takes) and the blocks several heads use; ``_mmseg.py`` what the mmseg-recipe networks share (the
decode-head base, the recipe's builders, the checkpoint renaming); ``encoders.py`` the dilated
encoders. A network file registers its builders with ``@register_model`` (an mmseg-recipe
network with one call of ``register_mmseg_builders``) and is listed once in ``models/registry.py``.

``encoder_weights="imagenet"`` loads ImageNet weights into the encoder through timm
(``encoder_weights=path`` or ``pretrained_file=path``: a local file); ``create_model(...,
pretrained=path)`` and ``visattn.load_official`` load the authors' whole segmentation checkpoints.

Forward contract: eval mode returns the main logits ``(B, K, H, W)`` at the input size; training
mode returns ``{"out": ..., <auxiliary names>: ...}``, all at the input size, and
``model.loss_weights`` has one weight per key (DANet: out/pam/cam 1; CCNet and the mmseg recipes:
out 1, aux 0.4; OCRNet: out 1, regions 0.4; FLANet: out/aux2/aux3 1).
"""
from .base import FCNHead, Segmentor, build_segmentor, build_variant
from .encoders import create_encoder

__all__ = ["FCNHead", "Segmentor", "build_segmentor", "build_variant", "create_encoder"]
