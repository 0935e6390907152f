"""Helpers shared by tests that inspect protocols."""

from __future__ import annotations

from commlib.comm.collectives import as_round


def recorded(protocol, log: list):
    """Forward ``protocol``'s rounds unchanged, appending every request to ``log``."""
    value = None
    while True:
        try:
            request = protocol.send(value)
        except StopIteration as stop:
            return stop.value
        log.extend(as_round(request))
        value = yield request
