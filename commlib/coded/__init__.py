"""Straggler-tolerant coded data parallelism over real processes (layer 4): a master and n workers.

Gradient coding (Tandon, Lei, Dimakis, Karampatziakis, ICML 2017) and sequential gradient
coding (Krishnan, Ebrahimi, Khisti, ICLR 2023) with the schedules of :mod:`commlib.coding`,
over ``torch.distributed`` (gloo) or mpi4py point-to-point messages:

* :mod:`.master` — :class:`CodedMaster` (rank 0): sends the round's update, polls for
  results until the cutoff, decodes, applies; drops late messages; the shutdown handshake.
* :mod:`.worker` — :class:`CodedWorker` (ranks 1..n): replays the schedule from the masks,
  computes coded results in one weighted backward pass per task, catches up when late.
* :mod:`.learner` — :class:`Learner`: T + 1 round-robin replicas, batches, gradients.
* :mod:`.transport` — :class:`GlooTransport` and :class:`MpiTransport` behind one interface.
* :mod:`.wire` — fixed-size tensor messages with header and trailer; :mod:`.handshake` —
  the startup config check; :mod:`.injector` — :class:`StragglerInjector` (modelled sleeps).
* :mod:`.train` — ``python -m commlib.coded.train`` under ``torchrun`` or ``mpiexec``.

The user guide is the "Real runtime" section of ``docs/gradient_coding.md``.
"""

from __future__ import annotations

from .injector import StragglerInjector, straggler_trace
from .learner import Learner
from .master import CodedMaster, MasterReport
from .transport import GlooTransport, MpiTransport, Transport
from .wire import Wire
from .worker import CodedWorker, WorkerReport

__all__ = ["CodedMaster", "MasterReport", "CodedWorker", "WorkerReport", "Learner", "StragglerInjector",
           "straggler_trace", "Transport", "GlooTransport", "MpiTransport", "Wire"]
