"""Measure a shaped link's TCP goodput between two worker namespaces (the harness's self-check).

:func:`measure_goodput` starts a receiver in worker ``dst``'s namespace and a
sender in worker ``src``'s; the sender streams zeros for ``seconds``; the
receiver times from its first byte to the end of the stream and prints the
rate. Both run as ``python netem_probe.py recv|send …`` under
``ip netns exec`` with timeouts, so a broken link fails instead of hanging.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from netem_harness import Network

__all__ = ["measure_goodput"]

_PORT = 29411
_CHUNK = 1 << 16


def _receive(host: str) -> None:
    with socket.create_server((host, _PORT)) as server:
        server.settimeout(30)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            first = conn.recv(_CHUNK)
            start, total = time.perf_counter(), 0
            while data := conn.recv(_CHUNK):
                total += len(data)
            elapsed = time.perf_counter() - start
    print(f"{total * 8 / elapsed / 1e6:.3f} {total + len(first)}", flush=True)


def _send(host: str, seconds: float) -> None:
    payload = bytes(_CHUNK)
    deadline = time.monotonic() + seconds
    for _ in range(100):
        try:
            conn = socket.create_connection((host, _PORT), timeout=30)
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise SystemExit(f"cannot connect to {host}:{_PORT}")
    with conn:
        while time.monotonic() < deadline:
            conn.sendall(payload)


def measure_goodput(net: Network, src: int = 0, dst: int = 1, seconds: float = 2.0) -> tuple[float, int]:
    """``(Mbit/s, bytes)``: TCP goodput and payload bytes received from worker ``src`` to worker ``dst``."""
    me = [sys.executable, __file__]
    recv = subprocess.Popen([*net.exec_prefix(dst), *me, "recv", net.address(dst)], stdout=subprocess.PIPE, text=True)
    try:
        subprocess.run([*net.exec_prefix(src), *me, "send", net.address(dst), str(seconds)],
                       check=True, timeout=seconds + 40)
        out, _ = recv.communicate(timeout=40)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    if recv.returncode != 0:
        raise RuntimeError(f"goodput receiver failed with exit code {recv.returncode}")
    rate, total = out.split()
    return float(rate), int(total)


if __name__ == "__main__":
    role, host = sys.argv[1], sys.argv[2]
    if role == "recv":
        _receive(host)
    else:
        _send(host, float(sys.argv[3]))
