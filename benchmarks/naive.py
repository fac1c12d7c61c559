"""The naive published formulations used as the benchmark baseline.

They live in the package (:mod:`visattn.attention.reference`) so that ``visattn bench`` and the
tests use the very same code; this module only re-exports them for scripts in ``benchmarks/``.
"""
from visattn.attention.reference import (  # noqa: F401
    NAIVE,
    NaiveBAM,
    NaiveCAM,
    NaiveCCA,
    NaiveFLA,
    NaivePAM,
    NaivePSA,
    NaiveSGE,
)
