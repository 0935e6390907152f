"""The network-emulation harness of benchmarks/netem: shaping accuracy and guaranteed teardown (root only)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

NETEM_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "netem"
sys.path.insert(0, str(NETEM_DIR))

from netem_harness import (  # noqa: E402
    LinkShape,
    Network,
    NetworkError,
    can_emulate,
    emulated_network,
    list_namespaces,
    read_counters,
    wait_or_kill,
)
from netem_probe import measure_goodput  # noqa: E402

ROOT, WHY = can_emulate()
needs_root = pytest.mark.skipif(not ROOT, reason=f"network emulation needs root: {WHY}")


@needs_root
@pytest.mark.parametrize("rate_mbit", [100.0, 1000.0])
def test_link_is_shaped_to_within_15_percent(rate_mbit: float) -> None:
    with emulated_network(2, LinkShape(rate_mbit)) as net:
        goodput, _ = measure_goodput(net, src=0, dst=1, seconds=2.0)
    assert abs(goodput / rate_mbit - 1) <= 0.15, f"asked {rate_mbit} Mbit/s, measured {goodput:.1f}"


@needs_root
def test_unshaped_link_is_faster_than_the_shaped_one() -> None:
    with emulated_network(2, LinkShape(None)) as net:
        assert measure_goodput(net, seconds=1.0)[0] > 1.5 * 1000.0


@needs_root
def test_namespaces_are_removed_after_an_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with emulated_network(3, LinkShape(1000.0)) as net:
            assert sorted(list_namespaces(net.prefix)) == sorted([*net.namespaces, net.bridge_ns])
            raise RuntimeError("boom")
    assert list_namespaces(net.prefix) == []


CHILD = """
import sys, time
sys.path.insert(0, {dir!r})
from netem_harness import LinkShape, emulated_network
with emulated_network(2, LinkShape(100.0), prefix={prefix!r}):
    print("ready", flush=True)
    time.sleep(60)
"""


@needs_root
def test_namespaces_are_removed_when_the_benchmark_is_terminated() -> None:
    prefix = "cntest01"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(dir=str(NETEM_DIR), prefix=prefix)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert len(list_namespaces(prefix)) == 3
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert list_namespaces(prefix) == []


def _tx_bytes(net: Network, rank: int) -> int:
    """Worker ``rank``'s tx byte counter, read inside its namespace."""
    link = net.worker_links[rank]
    out = subprocess.run([*net.exec_prefix(rank), "cat", f"/sys/class/net/{link}/statistics/tx_bytes"],
                         capture_output=True, text=True, timeout=30, check=True)
    return int(out.stdout)


@needs_root
def test_counters_see_the_payload_plus_at_most_10_percent_headers() -> None:
    with emulated_network(2, LinkShape(1000.0)) as net:
        before = _tx_bytes(net, 0)
        _, payload = measure_goodput(net, src=0, dst=1, seconds=0.5)
        sent = _tx_bytes(net, 0) - before
    assert payload > 10e6
    assert payload <= sent <= 1.10 * payload, (sent, payload)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="rate_mbit"):
        LinkShape(-5.0)
    with pytest.raises(ValueError, match="delay_ms"):
        LinkShape(100.0, delay_ms=-1.0)
    if ROOT:
        with pytest.raises(ValueError, match="size"):
            with emulated_network(1, LinkShape()):
                pass
        with pytest.raises(ValueError, match="prefix"):
            with emulated_network(2, LinkShape(), prefix="much-too-long-prefix"):
                pass
    else:
        with pytest.raises(NetworkError, match="root"):
            with emulated_network(2, LinkShape()):
                pass
    with pytest.raises(FileNotFoundError):
        read_counters("no-such-link-xyz")


def test_wait_or_kill_kills_what_outlives_the_deadline() -> None:
    """No root needed: a rank that finishes is waited for; one past the deadline is killed with its group."""
    quick = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    errors = wait_or_kill([quick, stuck], timeout=2.0)
    assert quick.returncode == 0
    assert stuck.returncode == -signal.SIGKILL
    assert errors == ["rank 1 still running after 2s: killed"]

