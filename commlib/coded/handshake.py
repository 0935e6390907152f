"""Startup handshake of the coded runtime: every worker's configuration must match the master's.

Message sizes are fixed by the configuration and a gloo receiver aborts on an oversized
message (see :mod:`commlib.coded.transport`), so ranks compare configurations before any
payload moves. Steps, with one int64 value per message (the same size for every config):

1. each worker sends :func:`~commlib.comm.fingerprint.fingerprint` of its config (``HELLO_TAG``);
2. the master compares each with its own and answers every worker 1 (all the same) or 0
   (``VERDICT_TAG``);
3. on 0 every rank raises :class:`~commlib.errors.ConfigMismatchError` (the master's names
   the differing ranks), so no rank waits for messages that will never come.
"""

from __future__ import annotations

import json

import torch

from ..comm.fingerprint import fingerprint
from ..errors import ConfigMismatchError
from .transport import Transport, wait, wait_all
from .wire import HELLO_TAG, VERDICT_TAG

__all__ = ["greet_workers", "greet_master"]


def greet_workers(transport: Transport, config: dict[str, object], timeout: float) -> None:
    """The master's side: collect every worker's fingerprint, answer each, raise if any differs."""
    mine = fingerprint(config)
    workers = range(1, transport.world)
    pending = [transport.irecv(torch.zeros(1, dtype=torch.int64), w, HELLO_TAG) for w in workers]
    theirs = [int(wait(p, timeout, f"the hello of rank {w}")[0]) for w, p in zip(workers, pending)]
    differ = [w for w, fp in zip(workers, theirs) if fp != mine]
    verdict = torch.tensor([int(not differ)], dtype=torch.int64)
    sends = [transport.isend(verdict, w, VERDICT_TAG) for w in workers]
    wait_all(sends, timeout, "verdicts to the workers")
    if differ:
        raise ConfigMismatchError(f"coded runtime: ranks {differ} have a different configuration than the master "
                                  f"(rank 0 config {json.dumps(config, sort_keys=True, default=str)})")


def greet_master(transport: Transport, config: dict[str, object], timeout: float) -> None:
    """A worker's side: send the fingerprint, raise if the master's verdict is a mismatch."""
    send = transport.isend(torch.tensor([fingerprint(config)], dtype=torch.int64), 0, HELLO_TAG)
    answer = transport.irecv(torch.zeros(1, dtype=torch.int64), 0, VERDICT_TAG)
    verdict = int(wait(answer, timeout, "the master's verdict")[0])
    wait(send, timeout, "the hello to the master")
    if verdict != 1:
        raise ConfigMismatchError(f"coded runtime: the master found ranks whose configuration differs from its own "
                                  f"(rank {transport.rank} has {json.dumps(config, sort_keys=True, default=str)})")
