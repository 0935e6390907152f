"""The coded runtime's wire format: round trips, and every malformed message rejected with a named reason."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from commlib.coded.wire import FIN, RESULT, ROUND, STOP, Wire
from commlib.errors import WireFormatError


@pytest.fixture
def wire() -> Wire:
    return Wire(n=10, slots=3, rounds=20, params=12, gradient=5)


def test_update_round_trip(wire: Wire) -> None:
    mask = np.zeros(10, dtype=bool)
    mask[[0, 7, 9]] = True
    params = torch.arange(12, dtype=torch.float32)
    msg = wire.update(ROUND, 4, mask, params)
    assert msg.shape == (wire.update_size,) == (3 + 2 + 12 + 1,)
    got = wire.parse_update(msg)
    assert (got.kind, got.round) == (ROUND, 4) and np.array_equal(got.mask, mask) and torch.equal(got.params, params)
    assert wire.parse_update(wire.update(STOP, 20, mask, params)).kind == STOP


def test_result_round_trip(wire: Wire) -> None:
    grad = torch.linspace(-1, 1, 5)
    got = wire.parse_result(wire.result(RESULT, 3, 7, 2, 1, grad), worker=7, slot=2)
    assert (got.kind, got.round, got.worker, got.slot, got.job) == (RESULT, 3, 7, 2, 1)
    assert torch.equal(got.gradient, grad)
    fin = wire.parse_result(wire.result(FIN, -1, 7, 2, -1, None), worker=7, slot=2)
    assert fin.kind == FIN and not fin.gradient.any()


def corrupt(msg: torch.Tensor, how: str) -> torch.Tensor:
    msg = msg.clone()
    if how == "short":
        buf = torch.full_like(msg, math.nan)  # what a NaN-filled receive buffer holds after a short message
        buf[:-2] = msg[:-2]
        return buf
    if how == "long":
        return torch.cat([msg, msg[:1]])
    index, value = {"magic": (0, 1.0), "trailer": (-1, 0.0), "nan": (-2, math.nan), "inf": (-2, math.inf),
                    "kind": (1, 9.0), "fraction": (2, 1.5), "huge": (2, 2.0 ** 30)}[how]
    msg[index] = value
    return msg


@pytest.mark.parametrize("how, reason", [("short", "bad trailer nan"), ("long", "expected 12 values"),
                                         ("magic", "bad magic"), ("trailer", "bad trailer 0.0"),
                                         ("nan", "non-finite"), ("inf", "non-finite"), ("kind", "unknown kind 9"),
                                         ("fraction", "must hold integers"), ("huge", "must hold integers")])
def test_malformed_results_are_rejected(wire: Wire, how: str, reason: str) -> None:
    msg = wire.result(RESULT, 3, 7, 2, 1, torch.ones(5))
    with pytest.raises(WireFormatError, match=reason):
        wire.parse_result(corrupt(msg, how), worker=7, slot=2)


def test_results_must_match_their_channel_and_range(wire: Wire) -> None:
    msg = wire.result(RESULT, 3, 7, 2, 1, torch.ones(5))
    with pytest.raises(WireFormatError, match="claims worker 7, slot 2"):
        wire.parse_result(msg, worker=6, slot=2)
    with pytest.raises(WireFormatError, match="claims worker 7, slot 2"):
        wire.parse_result(msg, worker=7, slot=0)
    with pytest.raises(WireFormatError, match="out of range"):
        wire.parse_result(wire.result(RESULT, 20, 7, 2, 1, torch.ones(5)), worker=7, slot=2)
    with pytest.raises(WireFormatError, match="out of range"):
        wire.parse_result(wire.result(RESULT, 3, 7, 2, -1, torch.ones(5)), worker=7, slot=2)


def test_malformed_updates_are_rejected(wire: Wire) -> None:
    msg = wire.update(ROUND, 4, np.zeros(10, dtype=bool), torch.zeros(12))
    bad_mask = msg.clone()
    bad_mask[4] = 1.0  # second mask byte: bit 7 is padding for n = 10
    with pytest.raises(WireFormatError, match="padding bits"):
        wire.parse_update(bad_mask)
    bad_mask[4] = 300.0
    with pytest.raises(WireFormatError, match=r"mask bytes must be integers in \[0, 255\]"):
        wire.parse_update(bad_mask)
    late = msg.clone()
    late[2] = 21
    with pytest.raises(WireFormatError, match="round 21 outside"):
        wire.parse_update(late)
    with pytest.raises(WireFormatError, match="update has unknown kind 3"):
        wire.parse_update(wire.update(ROUND, 4, np.zeros(10, dtype=bool), torch.zeros(12)).index_fill_(
            0, torch.tensor([1]), 3.0))
    with pytest.raises(WireFormatError, match="bad trailer"):
        wire.parse_update(corrupt(msg, "short"))


def test_bad_layouts_and_messages_are_refused() -> None:
    with pytest.raises(ValueError, match="float32 or float64"):
        Wire(4, 1, 5, 3, 3, dtype=torch.float16)
    with pytest.raises(ValueError, match="rounds must be in"):
        Wire(4, 1, 2 ** 24, 3, 3)
    wire = Wire(4, 1, 5, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="carries 3 parameters, got 4"):
        wire.update(ROUND, 0, np.zeros(4, dtype=bool), torch.zeros(4))
    with pytest.raises(ValueError, match="carries 3 gradient values, got 2"):
        wire.result(RESULT, 0, 0, 0, 0, torch.zeros(2))
    with pytest.raises(ValueError, match="update kind"):
        wire.update(RESULT, 0, np.zeros(4, dtype=bool), torch.zeros(3))
    assert wire.buffer(7).isnan().all() and wire.buffer(7).dtype == torch.float64
