"""The DDP communication hook: ``model.register_comm_hook(state, hook)``.

For each bucket DDP hands over, the hook:

1. names the bucket's gradients by parameter (``bucket.parameters()``), so
   state survives DDP's bucket rebuild after the first step, and records the
   names in ``state.bucket_layout`` (for the simulator);
2. builds the bucket's protocol with the state's ``GradientExchange`` (dense
   warm-up, dense small tensors, compressed the rest, non-finite pass-through);
   on the first step it is preceded by the config-fingerprint check, and the
   step's last bucket carries the adaptive policy's decision, when one is due;
3. submits it to the state's ``OrderedIssuer``: bucket b+1 starts when bucket
   b has finished, so every rank issues its collectives in the same order, and
   the backward pass is never blocked;
4. writes the averaged gradients into ``bucket.buffer()`` (in place, so it
   works with ``gradient_as_bucket_view``; cast back to fp16/bf16 where the
   model trains in them) and completes the returned future with it.
"""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations as objects.
import torch
import torch.distributed as dist
from torch.futures import Future

from ..comm.collectives import Protocol
from ..comm.exchange import adjacent_view
from ..comm.fingerprint import verify_same_config
from ..comm.torch_driver import Timing
from .state import CommState

__all__ = ["hook"]


def _protocol(state: CommState, named: list[tuple[str, torch.Tensor]], step: int, last: bool) -> Protocol:
    """The bucket's protocol, preceded on the first call by the config-fingerprint check."""
    if not state.verified:
        yield from verify_same_config(state.config(), state.rank, named[0][1].device)
        state.verified = True
    return (yield from state.exchange.protocol(named, step, inplace=True, last=last))


def hook(state: CommState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Compress, exchange and average one bucket's gradients; returns a future of the bucket buffer."""
    buffer = bucket.buffer()
    grads = bucket.gradients()
    named = [(state.name_of(p), g) for p, g in zip(bucket.parameters(), grads)]
    state.note_bucket(bucket.index(), [name for name, _ in named])
    step = state.step
    last = bucket.is_last()
    if last:
        state.step += 1
    timing = Timing()
    done = state.issuer.submit(lambda: _protocol(state, named, step, last), timing)  # hands the bucket over

    def write_back(fut: Future) -> torch.Tensor:
        means, report = fut.value()
        flat = adjacent_view(means)
        if flat is not None and flat.numel() == buffer.numel():
            if flat.data_ptr() != buffer.data_ptr():  # reduced in place already (dense casts): nothing to copy
                buffer.copy_(flat)  # one copy when the exchange returned views of one reduced tensor
        else:
            offset = 0
            for g, mean in zip(grads, means):
                target = buffer[offset : offset + g.numel()]
                if mean.data_ptr() != target.data_ptr():  # else written in place already (e.g. PowerSGD)
                    target.copy_(mean.reshape(-1))
                offset += g.numel()
        state.stats.add_bucket(report, timing.compute_s, timing.comm_s)
        if last:
            state.stats.end_step(step)
        return buffer

    return done.then(write_back)
