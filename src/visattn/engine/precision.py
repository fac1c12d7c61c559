"""The mixed-precision setting: ``train.amp`` of a config and ``--amp`` of the commands, turned into
the dtype ``torch.autocast`` runs in (or ``None``: full precision), checked against the device."""
from __future__ import annotations

import torch

__all__ = ["AMP_DTYPES", "amp_dtype"]

AMP_DTYPES = {None: None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(name: str | None, device: torch.device, option: str = "train.amp") -> torch.dtype | None:
    """The autocast dtype of the mixed-precision setting ``name`` (null, bf16, fp16) on ``device``;
    an unknown name, or fp16 off CUDA, is a ``ValueError`` naming ``option``."""
    if name not in AMP_DTYPES:
        raise ValueError(f"{option} must be null, bf16 or fp16, got {name!r}")
    dtype = AMP_DTYPES[name]
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError(f"{option} fp16 needs a CUDA device, the device is {device}; use {option} bf16 there")
    return dtype
