"""Dense exchanges: Identity (fp32 or the gradient's own dtype), FP16 and BF16 casts.

These are the baselines and the fallback for tensors not worth compressing.
Each divides by the world size *before* the native all-reduce (as torch's
``allreduce_hook`` does, so the Identity hook matches DDP's built-in reduction
bit for bit, and 16-bit sums cannot overflow). BF16 works on gloo too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..comm.collectives import AllReduce, Protocol
from .base import Compressor, TensorContext, WireBytes

__all__ = ["Identity", "FP16", "BF16"]


@dataclass
class _Cast(Compressor):
    """Send ``x / world_size`` cast to ``wire_dtype`` through a native all-reduce."""

    wire_dtype = torch.float32
    is_cast = True

    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        return WireBytes(values=shape.numel() * self.wire_dtype.itemsize)

    def exchange(self, x: Tensor, ctx: TensorContext, inplace: bool = False) -> Protocol[Tensor]:
        """Divide by the world size, cast, native all-reduce; ``inplace`` may reuse ``x`` as the payload."""
        if inplace and x.dtype == self.wire_dtype:
            payload = x.div_(ctx.world_size)  # the caller gave ``x`` away (DDP's bucket): no copy, like allreduce_hook
        else:
            payload = (x / ctx.world_size).to(self.wire_dtype)
        total = yield AllReduce(payload, ordered=False)
        return total.to(torch.float32)


@dataclass
class Identity(_Cast):
    """No compression: a native fp32 all-reduce of the mean (the DDP default)."""

    name = "identity"


@dataclass
class FP16(_Cast):
    """Half-precision all-reduce (2 bytes per element)."""

    name = "fp16"
    wire_dtype = torch.float16


@dataclass
class BF16(_Cast):
    """bfloat16 all-reduce (2 bytes per element); unlike torch's ``bf16_compress_hook``, also on gloo."""

    name = "bf16"
    wire_dtype = torch.bfloat16
