"""Segmentation losses: the terms ``train.loss`` weights (``ce``, ``ohem``, ``dice``, ``focal``,
``lovasz``), their weighted sum (:class:`LossTerms`), and its weighted sum over a model's outputs
(:func:`weighted_loss`): ``total = sum_out w_out * sum_term w_term * term(outputs[out])``.

Every term takes logits ``(N, C, *)`` (``(N, C)`` for classification) and integer targets
``(N, *)``, and counts each position as a pixel. Pixels labelled
:data:`~visattn.data.IGNORE_INDEX` (255) contribute nothing; a batch whose pixels are all ignored
gives 0, still attached to the graph (``backward`` runs, DDP processes stay in step). Logits are
cast to float32 (AMP). ``p`` is the softmax of the logits, ``y_i`` pixel ``i``'s class, ``g`` the
one-hot target and ``w`` the optional per-class weights (``train.class_weights``,
:mod:`~visattn.engine.class_weights`); sums run over the non-ignored pixels of the whole batch.

``ce``
    Cross-entropy with torch's ``weight=`` semantics: ``sum_i w_yi l_i / sum_i w_yi``,
    ``l_i = -log p_i,yi`` (with ``label_smoothing``: torch's smoothed target, whose smoothing part
    weights each class ``c`` by ``w_c``, over the same ``sum_i w_yi``). Without weights: the mean over
    the pixels.
``ohem``
    Online hard example mining (the CCNet/OCNet code): the cross-entropy of the pixels whose
    probability of their class is at most ``ohem_thresh``, and at least of the ``ohem_min_kept``
    hardest ones (chosen without weights), reduced as ``ce`` over the kept pixels. On
    classification logits it is ``ce``.
``focal``
    Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
    https://arxiv.org/abs/1708.02002), multiclass softmax form: ``FL_i = -(1 - p_i,yi)^gamma log p_i,yi``,
    ``gamma = train.focal_gamma``, reduced as ``ce``: ``sum_i w_yi FL_i / sum_i w_yi`` (the class
    weights play the paper's alpha_t; ``gamma = 0`` is ``ce``). The paper divides by the number of
    foreground anchors; a dense segmentation loss divides by the pixels (their summed weight).
``dice``
    Soft Dice (Milletari et al., "V-Net", 3DV 2016, https://arxiv.org/abs/1606.04797) with the
    denominator of segmentation_models_pytorch's ``DiceLoss``: per class, over the batch,
    ``D_c = 2 sum_i p_ic g_ic / (sum_i p_ic + sum_i g_ic)`` (V-Net squares ``p`` and ``g`` in the
    denominator), no smoothing constant. The loss is ``sum_c w_c (1 - D_c) / sum_c w_c`` over the
    classes present in the batch's target (unweighted: their mean).
``lovasz``
    Lovász-Softmax (Berman et al., "The Lovász-Softmax loss: A tractable surrogate for the
    optimization of the intersection-over-union measure in neural networks", CVPR 2018,
    https://arxiv.org/abs/1705.08790; the authors' ``lovasz_softmax`` with ``classes="present"``,
    ``per_image=False``). Per class, the Lovász extension of the Jaccard loss
    ``Delta_c(M) = 1 - |F_c \\ M| / |F_c u M|`` (``F_c``: the class's pixels, ``M``: the mispredicted
    ones) at the errors ``m_i = |g_ic - p_ic|``: with the errors sorted in decreasing order,
    ``sum_k m_(k) (Delta_c({1..k}) - Delta_c({1..k-1}))``; on hard one-hot predictions it is the
    Jaccard loss ``1 - IoU_c``. Reduced over the present classes as ``dice``.

A class whose weight is 0 contributes nothing; when every pixel (``ce``, ``ohem``, ``focal``) or
present class (``dice``, ``lovasz``) weighs 0, the term is 0.

These terms are written here rather than taken from segmentation_models_pytorch: its ``DiceLoss``
and ``LovaszLoss`` take no per-class weights, its ``DiceLoss`` averages over every class (absent
ones counting 0) where here absent classes are left out as in Lovász-Softmax, and its multiclass
``FocalLoss`` sums one-vs-rest sigmoid focal losses rather than the softmax form above. Each term is
a few lines and needs no dependency.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import IGNORE_INDEX
from .config import LOSSES, TrainConfig

__all__ = ["output_weights", "cross_entropy", "ohem_cross_entropy", "focal_loss", "dice_loss", "lovasz_softmax", "LossTerms",
           "weighted_loss"]


def _per_pixel_weights(target: Tensor, keep: Tensor, class_weights: Tensor | None) -> Tensor:
    """Each pixel's weight: its class's (1 without class weights) where ``keep``, else 0."""
    if class_weights is None:
        return keep.float()
    return class_weights[torch.where(keep, target, 0)] * keep


def _divide(total: Tensor, weight: Tensor) -> Tensor:
    """``total / weight``, and ``total`` itself when nothing weighs (``weight`` 0)."""
    return total / torch.where(weight > 0, weight, torch.ones_like(weight))


def _pixels(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Float32 logits ``(P, C)`` and targets ``(P,)`` of ``(N, C, *)`` logits and ``(N, *)`` targets."""
    return logits.float().movedim(1, -1).reshape(-1, logits.shape[1]), target.reshape(-1)


def cross_entropy(logits: Tensor, target: Tensor, class_weights: Tensor | None = None,
                  label_smoothing: float = 0.0) -> Tensor:
    """The ``ce`` term (module docstring): ``sum_i w_yi l_i / sum_i w_yi`` over non-ignored pixels."""
    loss = F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=IGNORE_INDEX,
                           reduction="sum", label_smoothing=label_smoothing)
    return _divide(loss, _per_pixel_weights(target, target != IGNORE_INDEX, class_weights).sum())


def ohem_cross_entropy(logits: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 100000,
                       class_weights: Tensor | None = None) -> Tensor:
    """Online hard example mining (as in the CCNet/OCNet code): keep the pixels whose predicted
    probability of the true class is below ``thresh``, and at least the ``min_kept`` hardest ones;
    their cross-entropy reduced as :func:`cross_entropy`'s."""
    pixel = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none").flatten()
    target = target.flatten()
    valid = target != IGNORE_INDEX
    n = int(valid.sum())
    if n == 0:
        return pixel.sum() * 0
    prob = torch.exp(-pixel.detach())
    threshold = torch.tensor(thresh, device=prob.device)
    if min_kept > 0:
        kth = prob[valid].kthvalue(min(n, min_kept)).values
        threshold = torch.maximum(threshold, kth)
    weight = _per_pixel_weights(target, valid & (prob <= threshold), class_weights)
    return _divide((weight * pixel).sum(), weight.sum())


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, class_weights: Tensor | None = None) -> Tensor:
    """Softmax focal loss (Lin et al. 2017), ``sum_i w_yi FL_i / sum_i w_yi`` with
    ``FL_i = -(1 - p_i,yi)^gamma log p_i,yi`` (module docstring)."""
    logits, target = _pixels(logits, target)
    valid = target != IGNORE_INDEX
    log_pt = logits.log_softmax(1).gather(1, torch.where(valid, target, 0)[:, None]).squeeze(1)
    # 1 - p_t from log p_t without cancellation; clamped above 0, where (1 - p_t)^gamma has an
    # infinite slope for gamma < 1
    modulation = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny) ** gamma
    weight = _per_pixel_weights(target, valid, class_weights)
    return _divide((weight * -modulation * log_pt).sum(), weight.sum())


def _present_class_mean(losses: Tensor, present: Tensor, class_weights: Tensor | None) -> Tensor:
    """``sum_c w_c losses_c / sum_c w_c`` over the classes ``present`` (``w = 1`` without weights)."""
    weight = present.float() if class_weights is None else class_weights * present
    return _divide((weight * losses).sum(), weight.sum())


def dice_loss(logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Soft Dice loss: ``1 - D_c`` averaged (weighted) over the classes present in ``target``
    (module docstring)."""
    logits, target = _pixels(logits, target)
    prob = logits.softmax(1)
    valid = (target != IGNORE_INDEX).float()
    target = torch.where(valid > 0, target, 0)
    # sums per class without a (P, C) one-hot: sum_i p_ic g_ic adds each pixel's p_i,yi to class y_i
    intersection = prob.new_zeros(prob.shape[1]).index_add(0, target, prob.gather(1, target[:, None])[:, 0] * valid)
    found = prob.new_zeros(prob.shape[1]).index_add(0, target, valid)
    dice = 2 * intersection / (valid @ prob + found).clamp_min(1)  # >= 1 for every present class
    return _present_class_mean(1 - dice, found > 0, class_weights)


def _lovasz_gradient(foreground_sorted: Tensor) -> Tensor:
    """``Delta({1..k}) - Delta({1..k-1})`` for ``k = 1..P`` in each column of ``(P, K)``: the Jaccard
    loss's increments as the pixels, sorted by decreasing error, are counted as mispredicted one by
    one (Berman et al., Algorithm 1)."""
    found = foreground_sorted.sum(0)
    intersection = found - foreground_sorted.cumsum(0)
    union = found + (1 - foreground_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.diff(jaccard, dim=0, prepend=jaccard.new_zeros(1, jaccard.shape[1]))


def lovasz_softmax(logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Lovász-Softmax loss (Berman et al. 2018) averaged (weighted) over the classes present in
    ``target`` (module docstring). The present classes are sorted together: a few
    ``(pixels, present classes)`` tensors at once."""
    logits, target = _pixels(logits, target)
    valid = target != IGNORE_INDEX
    prob, target = logits.softmax(1)[valid], target[valid]
    present = torch.bincount(target, minlength=prob.shape[1]) > 0
    classes = present.nonzero()[:, 0]
    foreground = (target[:, None] == classes).float()
    errors, order = (foreground - prob[:, classes]).abs().sort(0, descending=True)
    losses = (errors * _lovasz_gradient(foreground.gather(0, order))).sum(0)
    return _present_class_mean(prob.new_zeros(prob.shape[1]).index_copy(0, classes, losses), present, class_weights)


def output_weights(train: TrainConfig, model: nn.Module) -> dict[str, float]:
    """The weight of each model output in the loss: ``train.loss_weights``, else the model's
    ``loss_weights`` (e.g. DANet's out/pam/cam), else ``{"out": 1}``."""
    return dict(train.loss_weights or getattr(model, "loss_weights", None) or {"out": 1.0})


@dataclass(frozen=True)
class LossTerms:
    """``train.loss`` as a callable: ``sum_t weights[t] * term_t(logits, target)`` over the terms of
    the module docstring, with shared settings.

    Args:
        weights: term name (``ce``, ``ohem``, ``dice``, ``focal``, ``lovasz``) -> weight >= 0.
        class_weights: ``(C,)`` per-class weights, on the logits' device; ``None``: all 1.
        focal_gamma: the focal term's ``gamma``.
        ohem_thresh, ohem_min_kept: the ``ohem`` term's selection.
        label_smoothing: the ``ce`` term's.
    """

    weights: Mapping[str, float] = field(default_factory=lambda: {"ce": 1.0})
    class_weights: Tensor | None = None
    focal_gamma: float = 2.0
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        unknown = [name for name in self.weights if name not in LOSSES]
        if unknown:
            raise ValueError(f"unknown loss terms {unknown}; choose from {', '.join(LOSSES)}")
        if any(w < 0 for w in self.weights.values()) or not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"loss term weights must be >= 0, not all 0: {dict(self.weights)}")

    @classmethod
    def from_config(cls, train: TrainConfig, class_weights: Sequence[float] | None = None,
                    device: torch.device | str = "cpu") -> LossTerms:
        """The terms of config section ``train`` (``loss``: null is ``{ce: 1}``, or ``{ohem: 1}`` with
        ``ohem: true``), with resolved per-class weights (:func:`~visattn.engine.class_weights.resolve_class_weights`)."""
        weights = train.loss or ({"ohem": 1.0} if train.ohem else {"ce": 1.0})
        if class_weights is not None:
            class_weights = torch.tensor([float(w) for w in class_weights], device=device)
        return cls(dict(weights), class_weights, float(train.focal_gamma), float(train.ohem_thresh),
                   int(train.ohem_min_kept), float(train.label_smoothing))

    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The value of every term with a non-zero weight."""
        w = None if self.class_weights is None else self.class_weights.to(logits.device)

        def ohem() -> Tensor:
            if logits.dim() != 4:
                return cross_entropy(logits, target, w, self.label_smoothing)
            return ohem_cross_entropy(logits, target, self.ohem_thresh, self.ohem_min_kept, w)

        compute = {"ce": lambda: cross_entropy(logits, target, w, self.label_smoothing), "ohem": ohem,
                   "dice": lambda: dice_loss(logits, target, w), "lovasz": lambda: lovasz_softmax(logits, target, w),
                   "focal": lambda: focal_loss(logits, target, self.focal_gamma, w)}
        return {name: compute[name]() for name, weight in self.weights.items() if weight}

    def __call__(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted sum of the terms on ``logits`` ``(N, C, *)`` and ``target`` ``(N, *)``, and
        each term's value."""
        values = self.terms(logits, target)
        return sum(self.weights[name] * value for name, value in values.items()), values


def weighted_loss(outputs: Tensor | Mapping[str, Tensor], target: Tensor, weights: Mapping[str, float],
                  criterion: LossTerms | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum_k weights[k] * criterion(outputs[k])``; a bare tensor counts as ``{"out": tensor}``;
    ``criterion`` defaults to cross-entropy.

    Segmentation logits whose size differs from the target's are resized (bilinear). Returns the
    total and, for logging, each output's loss (key: the output's name) and, when ``criterion``
    has several terms, each term's value on it (``<output>_<term>``). Outputs without a weight are
    an error.
    """
    criterion = LossTerms() if criterion is None else criterion
    if isinstance(outputs, Tensor):
        outputs = {"out": outputs}
    missing = [k for k in outputs if k not in weights]
    if missing:
        raise ValueError(f"model outputs {missing} have no loss weight (weights: {dict(weights)}); "
                         "set train.loss_weights or the model's loss_weights")
    total, logged = None, {}
    for key, logits in outputs.items():
        if weights[key] == 0:
            continue
        if logits.dim() == 4 and logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss, values = criterion(logits, target)
        logged[key] = loss.detach()
        if len(values) > 1:
            logged.update({f"{key}_{name}": value.detach() for name, value in values.items()})
        total = weights[key] * loss if total is None else total + weights[key] * loss
    if total is None:
        raise ValueError(f"every loss weight is 0: {dict(weights)}")
    return total, logged
