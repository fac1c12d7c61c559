"""A throwaway attention module registered for one test: the registry-driven tests must cover it
from its declared traits alone."""
from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor, nn

from visattn.attention import factory
from visattn.attention._common import AttentionMap, check_input, query_cells, to_numpy

THROWAWAY = "throwaway"


class ThrowawayGate(nn.Module):
    """``y = x + gamma * sigmoid(proj(x)) * x``: a residual spatial gate, the identity at initialisation."""

    identity_at_init = True
    maps_drawn = ("throwaway_gate",)
    query_maps_drawn = ("throwaway_similarity_q",)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.proj = nn.Conv2d(channels, 1, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        check_input("ThrowawayGate", x, self.channels, self)
        return x + self.gamma * torch.sigmoid(self.proj(x)) * x

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> dict[str, Tensor]:
        return {"gate": torch.sigmoid(self.proj(x))}

    @torch.no_grad()
    def attention_maps(self, x: Tensor, points: Sequence[tuple[int, int]] = ()) -> list[AttentionMap]:
        cells = query_cells("ThrowawayGate", x, points)
        maps = [AttentionMap("throwaway_gate", "gate", to_numpy(self.attention_weights(x)["gate"][0, 0]))]
        for i, (h, w) in enumerate(cells):
            similarity = (x[0] * x[0, :, h, w, None, None]).sum(0)
            maps.append(AttentionMap(f"throwaway_similarity_q{i}", f"similarity to {(h, w)}", to_numpy(similarity),
                                     point=(h, w)))
        return maps


@pytest.fixture
def throwaway(monkeypatch) -> str:
    """Registers :class:`ThrowawayGate` for the duration of a test; its registered name."""
    monkeypatch.setitem(factory._ATTENTIONS, THROWAWAY, ThrowawayGate)
    return THROWAWAY
