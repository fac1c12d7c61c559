"""mmseg's GC, EMA, ISA and DNL code, transcribed, against the mechanisms computed position by position."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers import randomize_, rel_err
from visattn._official.mmseg import COUNTERPARTS, ContextBlock, DisentangledNonLocal2d, EMAModule, ISABlock
from visattn.attention.ema import EMAUnit

C = 8


def test_context_block_is_a_weighted_mean_added_to_every_position():
    m = randomize_(ContextBlock(C, ratio=1 / 2, fusion_types=("channel_add",))).double().eval()
    x = torch.randn(2, C, 4, 5, dtype=torch.float64)
    for i in range(2):
        logits = [(m.conv_mask(x[i : i + 1])[0, 0, r, c]).item() for r in range(4) for c in range(5)]
        weights = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
        context = sum(w * x[i, :, k // 5, k % 5] for k, w in enumerate(weights))
        with torch.no_grad():
            term = m.channel_add_conv(context[None, :, None, None])[0]
            assert rel_err(m(x[i : i + 1])[0], x[i] + term) < 1e-12


def test_ema_module_runs_em_and_moves_its_bases():
    m = EMAModule(C, num_bases=3, num_stages=2, momentum=0.2).double().train()
    feats = torch.randn(2, C, 3, 4, dtype=torch.float64)
    old = m.bases.clone()
    found = []
    for f in feats.flatten(2):  # one image at a time, the E- and M-steps as sums
        mu = old[0]
        for _ in range(2):
            z = torch.softmax(f.T @ mu, dim=1)
            mu = F.normalize((f @ z) / z.sum(0), dim=0)
        found.append((mu, z))
    recon = m(feats)
    for i, (mu, z) in enumerate(found):
        assert rel_err(recon[i].flatten(1), mu @ z.T) < 1e-12
    new = F.normalize(torch.stack([mu for mu, _ in found]).mean(0), dim=0)
    torch.testing.assert_close(m.bases[0], 0.8 * old[0] + 0.2 * new, rtol=1e-12, atol=1e-14)


def test_isa_block_attends_within_long_and_short_range_groups():
    m = randomize_(ISABlock(C, 4, down_factor=(2, 3), norm_cfg=dict(type="BN"))).double().eval()
    x = torch.randn(1, C, 4, 6, dtype=torch.float64)  # 2 x 2 blocks of 2 x 3 cells, no padding

    def attend(block, cells):
        q, k = block.query_project(cells).flatten(2), block.key_project(cells).flatten(2)
        attn = torch.softmax(q.transpose(1, 2) @ k / block.channels**0.5, -1)
        return block.output_project((block.value_project(cells).flatten(2) @ attn.transpose(1, 2)).reshape(cells.shape))

    with torch.no_grad():
        y = torch.empty_like(x)
        for r in range(2):
            for c in range(3):
                y[:, :, r::2, c::3] = attend(m.global_relation, x[:, :, r::2, c::3])
        z = torch.empty_like(y)
        for i in (0, 2):
            for j in (0, 3):
                z[:, :, i : i + 2, j : j + 3] = attend(m.local_relation, y[:, :, i : i + 2, j : j + 3])
        assert rel_err(m(x), m.out_conv(torch.cat([z, x], 1))) < 1e-12


def test_dnl_transcription_row_by_row():
    m = randomize_(DisentangledNonLocal2d(C, temperature=0.5, norm_cfg=dict(type="SyncBN"))).double().eval()
    x = torch.randn(2, C, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        theta, phi, g = (b(x).flatten(2) for b in (m.theta, m.phi, m.g))
        theta, phi = theta - theta.mean(2, keepdim=True), phi - phi.mean(2, keepdim=True)
        unary = torch.softmax(m.conv_mask(x).flatten(1), -1)  # (B, N)
        y = torch.empty_like(g)
        for i in range(15):
            scores = (theta[:, :, i : i + 1] * phi).sum(1) / (m.inter_channels**0.5 * 0.5)
            y[:, :, i] = (torch.softmax(scores, -1)[:, None] * g).sum(-1) + (unary[:, None] * g).sum(-1)
        want = x + m.conv_out(y.reshape(2, -1, 3, 5))
        # the transcription divides by float32 tensors, as mmseg: 1e-8 off in float64
        assert rel_err(m(x), want) < 1e-7


def test_counterparts_take_the_visattn_hyperparameters_and_weights():
    m = randomize_(EMAUnit(C, num_bases=3, num_stages=2, momentum=0.3))
    official = COUNTERPARTS["ema"].build(m)
    assert (official.ema_module.num_bases, official.ema_module.num_stages, official.ema_module.momentum) == (3, 2, 0.3)
    assert torch.equal(official.ema_module.bases, m.bases)
    assert not any(p.requires_grad for p in official.ema_mid_conv.parameters())
