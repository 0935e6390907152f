"""Emulated network for the DDP benchmark: one Linux network namespace per worker, a bridge, ``tc`` shaping.

Topology for ``n`` workers and a unique prefix ``P`` (``"cn"`` + 6 hex digits, so
every name fits Linux's 15-character limit and parallel runs never collide):

* namespace ``P-br`` holds a bridge ``Pbr``;
* namespace ``P-wI`` (worker ``I``) holds one end of a veth pair, ``PwI``, with
  address ``10.<a>.<b>.(I+1)/24``; the other end, ``PbI``, sits in ``P-br``,
  enslaved to the bridge;
* with a rate, both ends of every pair are shaped with a token bucket (``tbf``):
  ``PwI`` (the worker's upload) and ``PbI`` (its download). A delay needs the
  ``netem`` qdisc (``sch_netem``); when the kernel lacks it a delay is refused
  with a clear error rather than silently dropped.

:func:`emulated_network` builds it and tears it down on exit *whatever
happens* (exception, Ctrl-C, SIGTERM turned into an exception): deleting a
namespace deletes the veth ends inside it, and the peers with them. Every
command runs with a timeout. Needs root (``CAP_NET_ADMIN``); :func:`can_emulate`
says whether this process may.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LinkShape",
    "Network",
    "NetworkError",
    "can_emulate",
    "emulated_network",
    "list_namespaces",
    "read_counters",
    "tbf_burst_bytes",
]

PREFIX_ROOT = "cn"
_CMD_TIMEOUT_S = 20.0


class NetworkError(RuntimeError):
    """A namespace, link or qdisc could not be set up (the message names the command and its error)."""


@dataclass(frozen=True)
class LinkShape:
    """How every worker's link is shaped: ``rate_mbit`` (None: unshaped) and one-way ``delay_ms`` (netem)."""

    rate_mbit: float | None = None
    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.rate_mbit is not None and not (isinstance(self.rate_mbit, (int, float)) and self.rate_mbit > 0):
            raise ValueError(f"rate_mbit must be a positive number or None, got {self.rate_mbit!r}")
        if not (isinstance(self.delay_ms, (int, float)) and self.delay_ms >= 0):
            raise ValueError(f"delay_ms must be a number >= 0, got {self.delay_ms!r}")

    @property
    def label(self) -> str:
        if self.rate_mbit is None:
            rate = "unshaped"
        elif self.rate_mbit >= 1000:
            rate = f"{self.rate_mbit / 1000:g} Gbit/s"
        else:
            rate = f"{self.rate_mbit:g} Mbit/s"
        return rate + (f" + {self.delay_ms:g} ms" if self.delay_ms else "")


@dataclass
class Network:
    """A built topology: names and addresses, for launching workers (``exec_prefix``) and reading counters."""

    prefix: str
    size: int
    shape: LinkShape
    subnet: str  # "10.a.b"
    bridge_ns: str = field(init=False)
    namespaces: list[str] = field(init=False)
    worker_links: list[str] = field(init=False)
    bridge_links: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.bridge_ns = f"{self.prefix}-br"
        self.namespaces = [f"{self.prefix}-w{i}" for i in range(self.size)]
        self.worker_links = [f"{self.prefix}w{i}" for i in range(self.size)]
        self.bridge_links = [f"{self.prefix}b{i}" for i in range(self.size)]

    def address(self, rank: int) -> str:
        return f"{self.subnet}.{rank + 1}"

    def exec_prefix(self, rank: int) -> list[str]:
        """The argv prefix running a command inside worker ``rank``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[rank]]


def can_emulate() -> tuple[bool, str]:
    """Whether this process can build namespaces (root and ``ip``/``tc`` present); otherwise why not."""
    if os.geteuid() != 0:
        return False, "not root (network namespaces and tc need CAP_NET_ADMIN)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return False, f"missing tools: {', '.join(missing)}"
    return True, ""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise NetworkError(f"`{' '.join(argv)}` timed out after {_CMD_TIMEOUT_S:g}s") from exc
    if check and done.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def list_namespaces(prefix: str = PREFIX_ROOT) -> list[str]:
    """Names of the network namespaces starting with ``prefix``."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip().startswith(prefix)]


def tbf_burst_bytes(rate_mbit: float) -> int:
    """Token-bucket depth: 4 ms of traffic at the rate, at least 64 KiB (a GSO super-packet must fit)."""
    return max(64 * 1024, int(rate_mbit * 1e6 / 8 * 4e-3))


def _shape_link(ns: str, link: str, shape: LinkShape, netem_ok: bool) -> None:
    """``tbf`` at the rate (queue of 50 ms) on ``link``'s egress; behind ``netem`` when there is a delay."""
    tc = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", link]
    parent = ["root"]
    if shape.delay_ms:
        if not netem_ok:
            raise NetworkError("a delay needs the netem qdisc (sch_netem), which this kernel does not provide")
        _run([*tc, "root", "handle", "1:", "netem", "delay", f"{shape.delay_ms}ms", "limit", "100000"])
        parent = ["parent", "1:1", "handle", "10:"]
    if shape.rate_mbit is not None:
        burst = tbf_burst_bytes(shape.rate_mbit)
        _run([*tc, *parent, "tbf", "rate", f"{shape.rate_mbit}mbit", "burst", str(burst), "latency", "50ms"])


def _netem_available(ns: str, link: str) -> bool:
    probe = _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", link, "root", "netem", "delay", "1ms"],
                 check=False)
    if probe.returncode == 0:
        _run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", link, "root"])
    return probe.returncode == 0


def _build(net: Network) -> None:
    p = net.prefix
    _run(["ip", "netns", "add", net.bridge_ns])
    _run(["ip", "-n", net.bridge_ns, "link", "add", f"{p}br", "type", "bridge"])
    _run(["ip", "-n", net.bridge_ns, "link", "set", f"{p}br", "up"])
    netem_ok: bool | None = None
    for rank, (ns, wl, bl) in enumerate(zip(net.namespaces, net.worker_links, net.bridge_links, strict=True)):
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "link", "add", wl, "type", "veth", "peer", "name", bl, "netns", net.bridge_ns])
        _run(["ip", "-n", ns, "addr", "add", f"{net.address(rank)}/24", "dev", wl])
        _run(["ip", "-n", ns, "link", "set", wl, "up"])
        _run(["ip", "-n", net.bridge_ns, "link", "set", bl, "master", f"{p}br"])
        _run(["ip", "-n", net.bridge_ns, "link", "set", bl, "up"])
        if net.shape.delay_ms and netem_ok is None:
            netem_ok = _netem_available(ns, wl)
        _shape_link(ns, wl, net.shape, bool(netem_ok))
        _shape_link(net.bridge_ns, bl, net.shape, bool(netem_ok))


def _teardown(net: Network) -> list[str]:
    """Delete every namespace of ``net`` (their links go with them); returns the errors, never raises."""
    errors = []
    for ns in [*net.namespaces, net.bridge_ns]:
        if ns in list_namespaces(net.prefix):
            try:
                _run(["ip", "netns", "del", ns])
            except NetworkError as exc:
                errors.append(str(exc))
    return errors


class _Terminated(Exception):
    """SIGTERM arrived: unwinds to the ``finally`` that tears the network down."""


@contextmanager
def emulated_network(size: int, shape: LinkShape, prefix: str | None = None) -> Iterator[Network]:
    """Build the topology of the module docstring for ``size`` workers; always remove it on exit.

    ``prefix`` (default: a fresh ``"cn"`` + 6 random hex digits) must be at most
    8 characters. SIGTERM is turned into an exception while the block runs, so
    a killed benchmark still tears down (SIGKILL cannot be caught: then
    ``ip netns list`` shows the ``cn…`` leftovers, see :func:`list_namespaces`).
    """
    ok, why = can_emulate()
    if not ok:
        raise NetworkError(f"cannot build an emulated network: {why}")
    if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= 250:
        raise ValueError(f"size must be an integer in [2, 250], got {size!r}")
    prefix = prefix or PREFIX_ROOT + secrets.token_hex(3)
    if len(prefix) > 8 or not prefix.isalnum():
        raise ValueError(f"prefix must be at most 8 letters/digits (link names max 15 chars), got {prefix!r}")
    if list_namespaces(prefix):
        raise NetworkError(f"namespaces with prefix {prefix!r} exist already: {list_namespaces(prefix)}")
    seed = int(secrets.token_hex(2), 16)
    net = Network(prefix, size, shape, subnet=f"10.{200 + seed % 50}.{seed // 50 % 250}")

    def on_term(signum: int, frame: object) -> None:
        raise _Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term) if _in_main_thread() else None
    try:
        _build(net)
        yield net
    finally:
        errors = _teardown(net)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if errors:
            raise NetworkError("teardown left errors: " + "; ".join(errors))


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def read_counters(link: str) -> tuple[int, int]:
    """``(tx_bytes, rx_bytes)`` of ``link`` as seen from the calling process's namespace (sysfs)."""
    base = Path("/sys/class/net") / link / "statistics"
    return int((base / "tx_bytes").read_text()), int((base / "rx_bytes").read_text())


def wait_or_kill(procs: Sequence[subprocess.Popen], timeout: float) -> list[str]:
    """Wait for every process (each started with ``start_new_session=True``) until a shared deadline.

    Any still running at the deadline, or left running when waiting fails, is
    killed with its whole process group. Returns one message per rank that
    had to be killed.
    """
    errors = []
    deadline = time.monotonic() + timeout
    try:
        for rank, proc in enumerate(procs):
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                errors.append(f"rank {rank} still running after {timeout:.0f}s: killed")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return errors


def start_ranks(world: int, net: Network | None, argv: Callable[[int], list[str]],
                extra_env: Mapping[str, str] | None = None) -> list[subprocess.Popen]:
    """Start ``world`` Python ranks ``sys.executable *argv(rank)`` with torchrun-style rendezvous variables.

    Inside ``net``'s namespaces (rank ``r`` in namespace ``r``, gloo bound to its
    link, named in ``NETEM_IFACE`` for the rank's own counters, the master at
    rank 0's address, a port from the pid) or, without a network, on loopback
    with a free port. One intra-op thread per rank, the
    repository on ``PYTHONPATH``, each rank in its own session so
    :func:`wait_or_kill` can kill its whole group.
    """
    if net is not None:
        port = 29500 + os.getpid() % 1000
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_PORT": str(port),
               "MASTER_ADDR": net.address(0) if net else "127.0.0.1", "OMP_NUM_THREADS": "1",
               "NETEM_IFACE": net.worker_links[rank] if net else "",
               "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **(extra_env or {})}
        if net is not None:
            env["GLOO_SOCKET_IFNAME"] = net.worker_links[rank]
        procs.append(subprocess.Popen([*(net.exec_prefix(rank) if net else []), sys.executable, *argv(rank)],
                                      env=env, start_new_session=True))
    return procs

