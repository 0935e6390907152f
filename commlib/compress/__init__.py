"""Compressors (layer 1): each turns one worker's tensor into a protocol that averages it over workers."""

from __future__ import annotations

from .base import Compressor, GatherCompressor, LinearCompressor, TensorContext, WireBytes
from .dense import BF16, FP16, Identity
from .lazy_delta import LazyDelta
from .powersgd import PowerSGD
from .qsgd import QSGD
from .randk import RandK
from .sign import Sign
from .sketch import FetchSGD, Sketch, SketchedSGD
from .sparse_delta import SparseDelta
from .topk import TopK

__all__ = [
    "BF16",
    "FP16",
    "QSGD",
    "Compressor",
    "FetchSGD",
    "GatherCompressor",
    "Identity",
    "LazyDelta",
    "LinearCompressor",
    "PowerSGD",
    "RandK",
    "Sign",
    "Sketch",
    "SketchedSGD",
    "SparseDelta",
    "TensorContext",
    "TopK",
    "WireBytes",
]
