"""Attention modules: one file per mechanism, all ``(B, C, H, W) -> (B, C, H, W)``.

Build by name with :func:`create_attention`; every module has ``attention_weights(x)`` returning
the weights it computed as a dict of tensors, for inspection (no cost to ``forward``), and
``attention_maps(x, points)`` turning them into the pictures :mod:`visattn.viz` draws. Each class
declares its traits (:class:`AttentionTraits`, read by :func:`attention_traits`).
"""
from .factory import AttentionTraits, attention_traits, create_attention, get_attention_class, list_attentions

__all__ = ["AttentionTraits", "attention_traits", "create_attention", "get_attention_class", "list_attentions"]
