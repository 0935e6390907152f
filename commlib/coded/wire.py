"""Wire format of the coded runtime: flat tensors of a size fixed by the configuration, no pickles (DESIGN.md §3).

Two messages, both 1-D tensors in the models' dtype, with a header and a trailer:

* **update** (master → worker), ``[MAGIC, kind, round, mask bytes (⌈n/8⌉), parameters, TRAILER]``:
  kind ``ROUND`` starts round ``round`` and carries round − 1's straggler mask (all zero for
  round 0) plus the parameters of all T + 1 models; kind ``STOP`` ends the run and carries
  the last round's mask. The mask bytes are :func:`~commlib.coding.tasks.pack_mask`'s, one
  byte per value.
* **result** (worker → master), ``[MAGIC, kind, round, worker, slot, job, gradient (P), TRAILER]``:
  kind ``RESULT`` is one task's coded gradient; kind ``FIN`` closes the worker's channel for
  that slot (round, slot and job are −1 except the slot, the gradient is zero).

Receivers fill their buffers with NaN before posting them, so a message shorter than
expected leaves a NaN trailer and is rejected; every header field must be a finite
integer in range and every value finite. Parsing raises
:class:`~commlib.errors.WireFormatError` naming the problem; the master counts such a
message as faulty (its worker straggles that round) instead of crashing. Integers travel
as floats, exact below 2**24 even in fp32: :class:`Wire` rejects configurations past that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import ops
from ..coding.tasks import pack_mask, unpack_mask
from ..coding.validation import check_int
from ..errors import WireFormatError

__all__ = ["Wire", "Update", "Result", "MAGIC", "TRAILER", "ROUND", "STOP", "RESULT", "FIN", "HELLO_TAG",
           "VERDICT_TAG", "UPDATE_TAG", "result_tag"]

MAGIC, TRAILER = 7919.0, -7919.0
ROUND, STOP, RESULT, FIN = 1, 2, 3, 4
HELLO_TAG, VERDICT_TAG, UPDATE_TAG = 1, 2, 3
"""Tags: the startup handshake, the master's updates; worker results use :func:`result_tag`."""
_EXACT = 2 ** 24  # integers stay exact in every float dtype we send (fp32 has 24 significant bits)
_UPDATE_HEAD, _RESULT_HEAD = 3, 6


@dataclass(frozen=True)
class Update:
    """A parsed update: ``kind`` (ROUND or STOP), ``round``, the previous round's straggler ``mask``, ``params``."""

    kind: int
    round: int
    mask: np.ndarray
    params: Tensor


@dataclass(frozen=True)
class Result:
    """A parsed result: ``kind`` (RESULT or FIN), ``round``, ``worker``, ``slot``, ``job`` and ``gradient``."""

    kind: int
    round: int
    worker: int
    slot: int
    job: int
    gradient: Tensor


class Wire:
    """Message layouts for ``n`` workers, ``slots`` results per worker-round, ``params`` values per update.

    ``params`` is the total over the T + 1 models; ``gradient`` the size of one model.
    """

    def __init__(self, n: int, slots: int, rounds: int, params: int, gradient: int,
                 dtype: torch.dtype = torch.float32) -> None:
        self.n = check_int(n, "n (workers)", 1, _EXACT - 1)
        self.slots = check_int(slots, "slots", 1, _EXACT - 1)
        self.rounds = check_int(rounds, "rounds", 1, _EXACT - 1)
        self.params = check_int(params, "params", 1)
        self.gradient = check_int(gradient, "gradient", 1)
        if not dtype.is_floating_point or torch.finfo(dtype).bits < 32:
            raise ValueError(f"wire dtype must be float32 or float64, got {dtype}")
        self.dtype = dtype
        self.mask_bytes = (self.n + 7) // 8

    @property
    def update_size(self) -> int:
        return _UPDATE_HEAD + self.mask_bytes + self.params + 1

    @property
    def result_size(self) -> int:
        return _RESULT_HEAD + self.gradient + 1

    def update(self, kind: int, round: int, mask: object, params: Tensor) -> Tensor:
        """An update message (the master's side)."""
        if kind not in (ROUND, STOP):
            raise ValueError(f"update kind must be ROUND or STOP, got {kind}")
        flat = params.detach().reshape(-1)
        if flat.numel() != self.params:
            raise ValueError(f"update carries {self.params} parameters, got {flat.numel()}")
        out = torch.empty(self.update_size, dtype=self.dtype)
        out[:_UPDATE_HEAD] = torch.tensor([MAGIC, kind, round], dtype=self.dtype)
        body = _UPDATE_HEAD + self.mask_bytes
        out[_UPDATE_HEAD:body] = pack_mask(mask, self.n).to(self.dtype)
        out[body:-1] = flat
        out[-1] = TRAILER
        return out

    def result(self, kind: int, round: int, worker: int, slot: int, job: int, gradient: Tensor | None) -> Tensor:
        """A result message (the worker's side); ``gradient`` is None for FIN."""
        if kind not in (RESULT, FIN):
            raise ValueError(f"result kind must be RESULT or FIN, got {kind}")
        out = torch.zeros(self.result_size, dtype=self.dtype)
        out[:_RESULT_HEAD] = torch.tensor([MAGIC, kind, round, worker, slot, job], dtype=self.dtype)
        if gradient is not None:
            flat = gradient.detach().reshape(-1)
            if flat.numel() != self.gradient:
                raise ValueError(f"result carries {self.gradient} gradient values, got {flat.numel()}")
            out[_RESULT_HEAD:-1] = flat
        out[-1] = TRAILER
        return out

    def buffer(self, size: int) -> Tensor:
        """A receive buffer of ``size`` values, NaN-filled so that a short message is detected."""
        return torch.full((size,), float("nan"), dtype=self.dtype)

    def parse_update(self, buf: Tensor) -> Update:
        """Validate and split an update; :class:`WireFormatError` names the problem."""
        self._frame(buf, self.update_size, "update")
        kind, rnd = self._ints(buf[1:_UPDATE_HEAD], "update")
        if kind not in (ROUND, STOP):
            raise WireFormatError(f"update has unknown kind {kind}")
        if not 0 <= rnd <= self.rounds:
            raise WireFormatError(f"update round {rnd} outside [0, {self.rounds}]")
        body = _UPDATE_HEAD + self.mask_bytes
        raw = buf[_UPDATE_HEAD:body]
        if not torch.equal(raw, raw.round()) or bool(((raw < 0) | (raw > 255)).any()):
            raise WireFormatError("update mask bytes must be integers in [0, 255]")
        mask = unpack_mask(raw.to(torch.uint8), self.n)
        return Update(kind, rnd, mask, buf[body:-1])

    def parse_result(self, buf: Tensor, worker: int, slot: int) -> Result:
        """Validate a result received on ``worker``'s channel for ``slot``; :class:`WireFormatError` otherwise."""
        self._frame(buf, self.result_size, f"result from worker {worker}, slot {slot}")
        kind, rnd, w, s, job = self._ints(buf[1:_RESULT_HEAD], f"result from worker {worker}")
        if kind not in (RESULT, FIN):
            raise WireFormatError(f"result from worker {worker} has unknown kind {kind}")
        if (w, s) != (worker, slot):
            raise WireFormatError(f"message on worker {worker}'s slot-{slot} channel claims worker {w}, slot {s}")
        if kind == RESULT and not (0 <= rnd < self.rounds and 0 <= job < self.rounds):
            raise WireFormatError(f"result from worker {worker} has round {rnd} / job {job} out of range")
        return Result(kind, rnd, w, s, job, buf[_RESULT_HEAD:-1])

    @staticmethod
    def _frame(buf: Tensor, size: int, what: str) -> None:
        if buf.dim() != 1 or buf.numel() != size:
            raise WireFormatError(f"{what}: expected {size} values, got shape {tuple(buf.shape)}")
        if float(buf[0]) != MAGIC:
            raise WireFormatError(f"{what}: bad magic {float(buf[0])!r}")
        if float(buf[-1]) != TRAILER:
            raise WireFormatError(f"{what}: bad trailer {float(buf[-1])!r} (message shorter than {size} values?)")
        if not ops.all_finite(buf):
            raise WireFormatError(f"{what}: non-finite values")

    @staticmethod
    def _ints(head: Tensor, what: str) -> list[int]:
        if not torch.equal(head, head.round()) or bool((head.abs() >= _EXACT).any()):
            raise WireFormatError(f"{what}: header {head.tolist()} must hold integers below 2**24")
        return [int(v) for v in head.tolist()]


def result_tag(slot: int) -> int:
    """The tag of a worker's result channel for ``slot`` (one channel per slot, for every round)."""
    return 16 + slot
