"""`server.workers = N`: N serving processes on one port (SO_REUSEPORT), one supervisor."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

from .config import Settings

log = logging.getLogger(__name__)

# A worker that dies sooner than this after starting is broken (port taken, bad cache dir):
# restarting it would only loop, so the supervisor stops instead.
MIN_UPTIME_SECONDS = 2.0


def supervise(settings: Settings, serve_one: Callable[[Settings, bool], int]) -> int:
    """Run `serve_one(settings, first)` in N processes; restart any that dies, stop all on a signal.

    Only the first worker started gets `first` true, so it alone announces the instance.

    SIGTERM or SIGINT is passed on to every worker as SIGTERM, so each finishes its own
    requests (`server.shutdown_grace`); the supervisor exits once all have.
    """
    # Spawned, not forked: each worker builds its own event loop, SQLite connection and session.
    context = multiprocessing.get_context("spawn")
    workers: dict[int, tuple[BaseProcess, float]] = {}
    stopping = False
    status = 0

    def start(first: bool = False) -> None:
        process = context.Process(
            target=serve_one, args=(settings, first), name="gitlab-pypi-proxy"
        )
        process.start()
        assert process.pid is not None
        workers[process.pid] = (process, time.monotonic())

    def stop_all(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        for process, _ in workers.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop_all) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for number in range(settings.server.workers):
            start(first=number == 0)
        log.info("supervising %d workers: %s", len(workers), ", ".join(map(str, workers)))
        while workers:
            multiprocessing.connection.wait([p.sentinel for p, _ in workers.values()], timeout=1)
            for pid, (process, started) in list(workers.items()):
                if process.is_alive():
                    continue
                process.join()
                del workers[pid]
                if stopping:
                    continue
                if time.monotonic() - started < MIN_UPTIME_SECONDS:
                    log.error(
                        "worker %d exited with code %s right after starting; stopping",
                        pid,
                        process.exitcode,
                    )
                    status = 1
                    stop_all()
                    continue
                log.warning(
                    "worker %d exited with code %s; starting another", pid, process.exitcode
                )
                start()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status
