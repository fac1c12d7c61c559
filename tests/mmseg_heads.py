"""An mmseg decode head (transcribed in ``visattn._official.mmseg``) against visattn's: one checkpoint
loaded into both through the head's mmseg key conversion, values and gradients compared; ``HEADS``
pairs the heads compared so (``tests/models/test_mmseg_networks.py``)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from helpers import randomize_, rel_err
from visattn._official import mmseg
from visattn.models.segmentation.dnlnet import DNLHead
from visattn.models.segmentation.emanet import EMAHead
from visattn.models.segmentation.gcnet import GCHead
from visattn.models.segmentation.isanet import ISAHead


def features(batch: int = 2, size=(9, 11), widths=(16, 24, 32), seed: int = 0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, *size, generator=gen, dtype=torch.float64) for c in widths]


def load_mmseg_head(head: nn.Module, official: nn.Module) -> dict[str, str]:
    """Load ``official``'s state dict, as a checkpoint's ``decode_head.*``, strictly into ``head``
    through ``head.convert_official_state_dict``; returns visattn name -> mmseg name."""
    checkpoint = {f"decode_head.{k}": v for k, v in official.state_dict().items()}
    converted = head.convert_official_state_dict(checkpoint, None)
    names = dict(zip(converted, official.state_dict()))
    assert all(k.startswith("head.") for k in converted)
    head.load_state_dict({k[len("head."):]: v for k, v in converted.items()}, strict=True)
    return {k[len("head."):]: v for k, v in names.items()}


def assert_head_equals_official(
    head: nn.Module, official: nn.Module, training: bool, device, rtol: float = 1e-10
) -> None:
    """Same logits, feature and parameter gradients (by mmseg name) and, in training, the same
    buffers afterwards (BN statistics, EMA's bases), in float64, up to ``rtol`` (relative to the
    largest value; gradients and buffers 10 times more)."""
    names = load_mmseg_head(head, official)
    head, official = (m.double().to(device).train(training) for m in (head, official))
    feats = [f.to(device) for f in features()]
    upstream = None
    results = []
    for m in (head, official):
        m.zero_grad(set_to_none=True)
        inputs = [f.clone().requires_grad_() for f in feats]
        out = m(inputs)
        if upstream is None:
            upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(device)
        (out * upstream).sum().backward()
        params = dict(m.named_parameters())
        results.append((out.detach(), inputs[-1].grad, params))
    (out, dx, ours), (want, dx_want, theirs) = results
    assert rel_err(out, want) < rtol
    assert rel_err(dx, dx_want) < 10 * rtol
    for name, p in ours.items():
        q = theirs[names[name]]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert (p.grad - q.grad).abs().max() <= 10 * rtol * max(q.grad.abs().max(), 1e-3), name
    if training:
        own, other = head.state_dict(), official.state_dict()
        for name, value in own.items():
            torch.testing.assert_close(value, other[names[name]], rtol=10 * rtol, atol=1e-14, msg=name)


def assert_state_dict_round_trip(head: nn.Module, official: nn.Module) -> None:
    """``head``'s own (random) weights, saved under mmseg's names, load strictly into ``official``,
    which then computes what ``head`` computes (eval mode, float64)."""
    names = load_mmseg_head(head, official)  # the name mapping (and a strict load mmseg -> visattn)
    randomize_(head, seed=7)
    official.load_state_dict({names[k]: v for k, v in head.state_dict().items()}, strict=True)
    head, official = (m.double().eval() for m in (head, official))
    with torch.no_grad():
        assert rel_err(head(features()), official(features())) < 1e-7


def official_gc_head(**kwargs) -> nn.Module:
    return randomize_(mmseg.GCHead(in_channels=32, channels=16, num_classes=5, dropout_ratio=0, **kwargs), seed=2)


def official_ema_head() -> nn.Module:
    head = mmseg.EMAHead(in_channels=32, channels=16, ema_channels=24, num_bases=6, num_stages=3, num_classes=5,
                         dropout_ratio=0)
    return randomize_(head, seed=2)


def official_isa_head() -> nn.Module:
    # 9 x 11 features in 4 x 3 groups: padded to 12 x 12 (rows 1 + 2, columns 0 + 1)
    head = mmseg.ISAHead(in_channels=32, channels=16, isa_channels=8, down_factor=(4, 3), num_classes=5,
                         dropout_ratio=0)
    return randomize_(head, seed=2)


def official_dnl_head() -> nn.Module:
    return randomize_(mmseg.DNLHead(in_channels=32, channels=16, num_classes=5, dropout_ratio=0), seed=2)


# name -> (visattn's head, mmseg's transcribed head with random weights, rtol of the comparison), small
HEADS = {
    "gcnet": (lambda: GCHead(32, 5, channels=16, dropout=0.0), official_gc_head, 1e-10),
    "emanet": (lambda: EMAHead(32, 5, channels=16, ema_channels=24, num_bases=6, dropout=0.0), official_ema_head,
               1e-10),
    "isanet": (lambda: ISAHead(32, 5, channels=16, isa_channels=8, down_factor=(4, 3), dropout=0.0),
               official_isa_head, 1e-10),
    # mmseg divides the scores by float32 tensors (sqrt(C') and the temperature: 1e-8 off in float64)
    "dnlnet": (lambda: DNLHead(32, 5, channels=16, dropout=0.0), official_dnl_head, 1e-7),
}
