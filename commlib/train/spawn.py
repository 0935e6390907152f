"""Launch a local gloo process group from one Python process, with timeouts (no ``torchrun`` needed).

:func:`launch` runs ``fn(rank, world, *args)`` on ``world`` spawned processes:

1. pick a free loopback port;
2. spawn the processes (``torch.multiprocessing``, spawn context); each sets ``RANK``,
   ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``, limits torch to ``threads`` threads,
   joins a gloo group whose collectives time out after ``collective_timeout`` seconds, and
   runs ``fn``;
3. each reports ``ok`` with ``fn``'s result (a picklable value) or ``error`` with its
   traceback through a queue;
4. the parent waits at most ``timeout`` seconds in all. The first error, or the deadline,
   ends the wait: the remaining processes are killed (a peer blocked in a collective
   would otherwise wait for its collective timeout) and :class:`LaunchError` names the
   failing rank with its traceback (or exit code, for a process that died without reporting).

``fn`` must be importable (a module-level function) for the spawn context to find it.
"""

from __future__ import annotations

import os
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..errors import CommlibError

__all__ = ["LaunchError", "free_port", "launch"]


class LaunchError(CommlibError):
    """A spawned worker failed or the workers did not finish in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn: Callable[..., Any], rank: int, world: int, port: int, reports: Any, args: tuple, threads: int,
            collective_timeout: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=collective_timeout))
        result = fn(rank, world, *args)
        dist.barrier()  # every rank's last collective has completed before any rank tears its group down
        reports.put((rank, "ok", result))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        reports.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 300.0, collective_timeout: float = 60.0,
           threads: int = 1) -> list[Any]:
    """Run ``fn(rank, world, *args)`` on ``world`` local gloo ranks; return the results in rank order."""
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be a positive integer, got {world!r}")
    if not timeout > 0 or not collective_timeout > 0:
        raise ValueError(f"timeouts must be > 0, got timeout={timeout!r}, collective_timeout={collective_timeout!r}")
    ctx = mp.get_context("spawn")
    reports = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world, port, reports, args, threads, collective_timeout),
                         daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < world:
            try:
                rank, status, payload = reports.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if r not in results and p.exitcode not in (None, 0)]
                if dead:
                    raise LaunchError(f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode}") from None
                if time.monotonic() >= deadline:
                    missing = sorted(set(range(world)) - set(results))
                    raise LaunchError(f"ranks {missing} did not finish within {timeout:g} s") from None
                continue
            if status == "error":
                raise LaunchError(f"rank {rank} failed:\n{payload}")
            results[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=5 if len(results) == world else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    return [results[r] for r in range(world)]
