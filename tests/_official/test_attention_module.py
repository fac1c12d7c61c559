"""The Jongchan/attention-module transcription (``visattn._official.attention_module``) against
BAM's and CBAM's equations written with functional ops."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import randomize_, rel_err

from visattn._official.attention_module import BAM, CBAM

C = 32


def bn(layer, x):
    return F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)


def test_bam_multiplies_its_gates(device):
    m = randomize_(BAM(C)).double().eval().to(device)
    x = torch.randn(2, C, 6, 6, dtype=torch.float64, device=device)
    gc, gs = m.channel_att.gate_c, m.spatial_att.gate_s
    hidden = F.relu(bn(gc.gate_c_bn_1, F.linear(x.mean((2, 3)), gc.gate_c_fc_0.weight, gc.gate_c_fc_0.bias)))
    mc = F.linear(hidden, gc.gate_c_fc_final.weight, gc.gate_c_fc_final.bias)[:, :, None, None]  # (B, C, 1, 1)
    s = F.relu(bn(gs.gate_s_bn_reduce0, gs.gate_s_conv_reduce0(x)))
    for i in range(2):
        conv = getattr(gs, f"gate_s_conv_di_{i}")
        assert conv.padding == conv.dilation == (4, 4)
        s = F.relu(bn(getattr(gs, f"gate_s_bn_di_{i}"), conv(s)))
    ms = gs.gate_s_conv_final(s)  # (B, 1, H, W)
    with torch.no_grad():
        assert rel_err(m(x), (1 + torch.sigmoid(mc * ms)) * x) < 1e-12


def test_cbam_gates_channels_then_positions(device):
    m = randomize_(CBAM(C)).double().eval().to(device)
    x = torch.randn(2, C, 5, 7, dtype=torch.float64, device=device)
    mlp = m.ChannelGate.mlp
    refined = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
    pooled = torch.stack([refined.amax(1), refined.mean(1)], 1)
    spatial = m.SpatialGate.spatial
    with torch.no_grad():
        assert rel_err(m(x), refined * torch.sigmoid(bn(spatial.bn, spatial.conv(pooled)))) < 1e-12
