"""Loss terms against hand-computed cases and the published formulas: cross-entropy as torch's
``weight=``, focal (Lin et al. 2017), soft Dice (smp's denominator), Lovász-Softmax (Berman et al.
2018: its Lovász extension evaluated from the set function itself, and the Jaccard loss on hard
predictions); ignored pixels, per-class weights, and the sums over terms and outputs."""
import math

import pytest
import torch
import torch.nn.functional as F

from visattn.engine.config import LOSSES, load_config
from visattn.engine.losses import (LossTerms, cross_entropy, dice_loss, focal_loss, lovasz_softmax,
                                   ohem_cross_entropy, weighted_loss)

# three labelled pixels and an ignored one, as probabilities over three classes (class 2 absent)
PROBS = [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.05, 0.9, 0.05], [0.2, 0.3, 0.5]]
TARGET = [0, 1, 1, 255]
WEIGHTS = [1.0, 3.0, 5.0]

TERMS = {
    "ce": lambda logits, target, w=None: cross_entropy(logits, target, w),
    "ohem": lambda logits, target, w=None: ohem_cross_entropy(logits, target, 0.7, 3, w),
    "focal": lambda logits, target, w=None: focal_loss(logits, target, 2.0, w),
    "dice": lambda logits, target, w=None: dice_loss(logits, target, w),
    "lovasz": lambda logits, target, w=None: lovasz_softmax(logits, target, w),
}


def _as_logits(probs, device="cpu") -> torch.Tensor:
    """``(1, C, 1, P)`` logits whose softmax over C is ``probs`` ``(P, C)``."""
    return torch.tensor(probs, dtype=torch.float64, device=device).log().float().T[None, :, None, :]


def _as_target(labels, device="cpu") -> torch.Tensor:
    return torch.tensor(labels, device=device)[None, None, :]


def _random_case(seed, n=2, c=4, h=5, w=6):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=gen) * 2
    target = torch.randint(0, c, (n, h, w), generator=gen)
    target[0, 0] = 255
    return logits, target


def test_terms_are_listed_in_the_config():
    assert set(TERMS) == set(LOSSES)


def test_cross_entropy_weights_as_torch(device):
    logits, target = _random_case(0)
    logits, target = logits.to(device), target.to(device)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], device=device)
    for smoothing in (0.0, 0.1):
        ref = F.cross_entropy(logits, target, weight=w, ignore_index=255, label_smoothing=smoothing)
        assert torch.allclose(cross_entropy(logits, target, w, smoothing), ref, atol=1e-6)
    # by hand: sum_i w_yi l_i / sum_i w_yi
    logits, target = _as_logits(PROBS, device), _as_target(TARGET, device)
    l0, l1, l2 = -math.log(0.7), -math.log(0.6), -math.log(0.9)
    assert cross_entropy(logits, target).item() == pytest.approx((l0 + l1 + l2) / 3, rel=1e-5)
    expected = (1 * l0 + 3 * l1 + 3 * l2) / 7
    assert cross_entropy(logits, target, torch.tensor(WEIGHTS, device=device)).item() == pytest.approx(expected, rel=1e-5)


def test_ohem_weights_the_kept_pixels():
    logits, target = _as_logits(PROBS), _as_target(TARGET)
    w = torch.tensor(WEIGHTS)
    l0, l1, l2 = -math.log(0.7), -math.log(0.6), -math.log(0.9)
    # p_t <= 0.65 keeps pixel 1 alone; min_kept=2 keeps the two hardest, pixels 1 and 0
    assert ohem_cross_entropy(logits, target, 0.65, 0, w).item() == pytest.approx(l1, rel=1e-5)
    assert ohem_cross_entropy(logits, target, 0.65, 2, w).item() == pytest.approx((3 * l1 + l0) / 4, rel=1e-5)
    assert ohem_cross_entropy(logits, target, 1.0, 0, w).item() == pytest.approx((l0 + 3 * l1 + 3 * l2) / 7, rel=1e-5)


def test_focal_by_hand(device):
    logits, target = _as_logits(PROBS, device), _as_target(TARGET, device)
    fl = [-(1 - p) ** 2 * math.log(p) for p in (0.7, 0.6, 0.9)]
    assert focal_loss(logits, target, 2.0).item() == pytest.approx(sum(fl) / 3, rel=1e-5)
    w = torch.tensor(WEIGHTS, device=device)
    assert focal_loss(logits, target, 2.0, w).item() == pytest.approx((fl[0] + 3 * fl[1] + 3 * fl[2]) / 7, rel=1e-5)
    fl = [-(1 - p) ** 0.5 * math.log(p) for p in (0.7, 0.6, 0.9)]
    assert focal_loss(logits, target, 0.5).item() == pytest.approx(sum(fl) / 3, rel=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy(device):
    logits, target = _random_case(1)
    logits, target = logits.to(device), target.to(device)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], device=device)
    assert torch.allclose(focal_loss(logits, target, 0.0, w), cross_entropy(logits, target, w), atol=1e-6)
    # the focal loss down-weights the easy pixels: below cross-entropy for gamma > 0
    assert focal_loss(logits, target, 2.0) < cross_entropy(logits, target)


def test_focal_gradient_is_finite_when_certain():
    logits = torch.tensor([[200.0, 0.0], [0.0, 1.0]], requires_grad=True)  # p_t = 1 exactly in float32
    focal_loss(logits, torch.tensor([0, 1]), 0.5).backward()
    assert logits.grad.isfinite().all()


def test_dice_by_hand(device):
    logits, target = _as_logits(PROBS, device), _as_target(TARGET, device)
    # class 0: 2 * 0.7 / (1.05 + 1); class 1: 2 * 1.5 / (1.7 + 2); class 2 absent: left out
    loss0, loss1 = 1 - 1.4 / 2.05, 1 - 3 / 3.7
    assert dice_loss(logits, target).item() == pytest.approx((loss0 + loss1) / 2, rel=1e-5)
    w = torch.tensor(WEIGHTS, device=device)
    assert dice_loss(logits, target, w).item() == pytest.approx((loss0 + 3 * loss1) / 4, rel=1e-5)


def test_dice_matches_its_formula_on_a_batch():
    logits, target = _random_case(2, n=3, c=5)
    target[target == 4] = 3  # class 4 absent
    prob = logits.softmax(1)
    losses, present = [], []
    valid = target != 255
    for c in range(5):
        p, g = prob[:, c][valid], (target[valid] == c).float()
        losses.append(1 - 2 * (p * g).sum() / (p.sum() + g.sum()))
        present.append(bool(g.sum() > 0))
    w = torch.tensor([1.0, 0.0, 2.0, 0.5, 4.0])
    expected = sum(w[c] * losses[c] for c in range(5) if present[c]) / sum(w[c] for c in range(5) if present[c])
    assert torch.allclose(dice_loss(logits, target, w), expected, atol=1e-6)
    assert not present[4] and present[1]


def _lovasz_from_definition(errors, foreground):
    """The Lovász extension of ``Delta(M) = 1 - |F \\ M| / |F u M|`` at ``errors``, from the set
    function: ``sum_k m_(k) (Delta(S_k) - Delta(S_k-1))``, ``S_k`` the ``k`` largest errors."""
    fg = {i for i, f in enumerate(foreground) if f}
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total, previous, mispredicted = 0.0, 0.0, set()
    for i in order:
        mispredicted.add(i)
        delta = 1 - len(fg - mispredicted) / len(fg | mispredicted)
        total += errors[i] * (delta - previous)
        previous = delta
    return total


def test_lovasz_by_hand():
    # class 1: errors [0.2, 0.3, 0.6] on foreground [1, 0, 1]: 0.6 * 1/2 + 0.3 * 1/6 + 0.2 * 1/3 = 5/12
    # class 0: errors [0.2, 0.3, 0.6] on foreground [0, 1, 0]: 0.6 * 1/2 + 0.3 * 1/2 + 0.2 * 0 = 9/20
    logits, target = _as_logits([[0.2, 0.8], [0.7, 0.3], [0.6, 0.4]]), _as_target([1, 0, 1])
    assert _lovasz_from_definition([0.2, 0.3, 0.6], [1, 0, 1]) == pytest.approx(5 / 12)
    assert _lovasz_from_definition([0.2, 0.3, 0.6], [0, 1, 0]) == pytest.approx(9 / 20)
    assert lovasz_softmax(logits, target).item() == pytest.approx((5 / 12 + 9 / 20) / 2, rel=1e-5)
    assert lovasz_softmax(logits, target, torch.tensor([3.0, 1.0])).item() == pytest.approx(
        (3 * 9 / 20 + 5 / 12) / 4, rel=1e-5)


def test_lovasz_matches_its_definition(device):
    logits, target = _random_case(3, n=2, c=3, h=3, w=4)
    prob, labels = logits.softmax(1).movedim(1, -1).reshape(-1, 3), target.flatten()
    keep = labels != 255
    prob, labels = prob[keep], labels[keep]
    per_class = [_lovasz_from_definition((((labels == c).float() - prob[:, c]).abs()).tolist(),
                                         (labels == c).tolist()) for c in range(3) if (labels == c).any()]
    got = lovasz_softmax(logits.to(device), target.to(device)).item()
    assert got == pytest.approx(sum(per_class) / len(per_class), rel=1e-5)


def test_lovasz_on_hard_predictions_is_the_jaccard_loss(device):
    gen = torch.Generator().manual_seed(4)
    c = 5
    target = torch.randint(0, c, (2, 6, 7), generator=gen)
    target[target == 3] = 0  # class 3 absent from the target (still predicted)
    target[1, :2] = 255
    pred = torch.randint(0, c, (2, 6, 7), generator=gen)
    logits = F.one_hot(pred, c).permute(0, 3, 1, 2).float() * 100  # softmax: 1 and 0 (to float precision)
    valid = target != 255
    ious = []
    for k in range(c):
        t, p = (target == k) & valid, (pred == k) & valid
        if t.any():
            ious.append((t & p).sum().item() / (t | p).sum().item())
    got = lovasz_softmax(logits.to(device), target.to(device)).item()
    assert got == pytest.approx(1 - sum(ious) / len(ious), abs=1e-5)
    assert len(ious) == 4


@pytest.mark.parametrize("name", TERMS)
def test_ignored_pixels_contribute_nothing(name, device):
    logits, target = _random_case(5)
    logits, target = logits.to(device), target.to(device)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], device=device)
    changed = logits.clone()
    changed[0, :, 0] = torch.randn_like(changed[0, :, 0]) * 5  # the ignored row
    changed.requires_grad_(True)
    loss = TERMS[name](changed, target, w)
    assert torch.allclose(loss, TERMS[name](logits, target, w), atol=1e-6)
    loss.backward()
    assert changed.grad[0, :, 0].abs().max() == 0 and changed.grad.abs().max() > 0


@pytest.mark.parametrize("name", TERMS)
def test_an_all_ignored_batch_gives_zero_with_a_graph(name, device):
    logits = torch.randn(2, 4, 3, 3, device=device, requires_grad=True)
    target = torch.full((2, 3, 3), 255, device=device)
    for w in (None, torch.ones(4, device=device)):
        loss = TERMS[name](logits, target, w)
        assert loss.item() == 0 and loss.requires_grad
        loss.backward()
        assert logits.grad.isfinite().all() and logits.grad.abs().max() == 0


@pytest.mark.parametrize("name", TERMS)
def test_weights_scale_free_and_zero_weight_silences_a_class(name):
    logits, target = _random_case(6)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    assert torch.allclose(TERMS[name](logits, target, w), TERMS[name](logits, target, 7 * w), atol=1e-6)
    if name in ("ce", "focal"):  # a pixel-wise mean: weight 0 is the same as ignoring the class's pixels
        w[2] = 0
        assert torch.allclose(TERMS[name](logits, target, w),
                              TERMS[name](logits, target.masked_fill(target == 2, 255), w), atol=1e-6)
    everything_zero = torch.zeros(4, requires_grad=False)
    assert TERMS[name](logits, target, everything_zero).item() == 0


def test_loss_terms_sum_over_terms_and_outputs():
    logits, target = _random_case(7)
    aux = logits[:, :, ::2, ::2] * 0.5
    aux_full = F.interpolate(aux, size=target.shape[-2:], mode="bilinear", align_corners=False)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    criterion = LossTerms({"ce": 1.0, "dice": 0.5, "lovasz": 0.0, "focal": 2.0}, w, focal_gamma=1.5)

    def expected(x):
        return cross_entropy(x, target, w) + 0.5 * dice_loss(x, target, w) + 2 * focal_loss(x, target, 1.5, w)

    total, logged = weighted_loss({"out": logits, "aux": aux}, target, {"out": 1.0, "aux": 0.4}, criterion)
    assert torch.allclose(total, expected(logits) + 0.4 * expected(aux_full), atol=1e-6)
    assert set(logged) == {f"{o}{t}" for o in ("out", "aux") for t in ("", "_ce", "_dice", "_focal")}
    assert torch.allclose(logged["aux_dice"], dice_loss(aux_full, target, w))
    # one term: the output's loss alone is logged
    total, logged = weighted_loss(logits, target, {"out": 1.0}, LossTerms({"lovasz": 2.0}))
    assert set(logged) == {"out"} and torch.allclose(total, 2 * lovasz_softmax(logits, target))


def test_classification_logits():
    gen = torch.Generator().manual_seed(8)
    logits, target = torch.randn(6, 4, generator=gen), torch.tensor([0, 1, 2, 3, 1, 255])
    criterion = LossTerms({"ohem": 1.0, "dice": 1.0})
    total, _ = criterion(logits, target)
    assert torch.allclose(total, cross_entropy(logits, target) + dice_loss(logits[:, :, None], target[:, None]))


def test_loss_terms_from_config():
    def terms(*overrides, class_weights=None):
        return LossTerms.from_config(load_config(None, list(overrides)).train, class_weights)

    assert dict(terms().weights) == {"ce": 1.0}
    assert dict(terms("train.ohem=true").weights) == {"ohem": 1.0}
    criterion = terms("train.loss={dice: 1, focal: 0.5}", "train.focal_gamma=3", class_weights=[1, 2])
    assert dict(criterion.weights) == {"dice": 1, "focal": 0.5} and criterion.focal_gamma == 3.0
    assert criterion.class_weights.tolist() == [1.0, 2.0] and criterion.class_weights.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown loss terms"):
        LossTerms({"dice": 1.0, "tversky": 1.0})
    with pytest.raises(ValueError, match="not all 0"):
        LossTerms({"dice": 0.0})
