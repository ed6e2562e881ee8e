"""`server.workers = N`: a lean supervisor that holds the port and runs N serving processes.

The supervisor imports no part of the application (no aiohttp), so it costs a bare interpreter's
memory. It claims the port first: a second instance on the same port stops with one line,
whatever its cache. Each worker binds its own SO_REUSEPORT socket (the kernel spreads
connections over them), reads the settings from its stdin, and watches a pipe that only the
supervisor holds open: when the supervisor dies, even by SIGKILL, the pipe ends and so do they.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn

import proxy

from .config import Settings
from .log import announce_start, setup_logging

log = logging.getLogger("proxy.workers")

# A worker that dies sooner than this after starting is broken (port taken, bad cache dir):
# restarting it would only loop, so the supervisor stops instead.
MIN_UPTIME_SECONDS = 2.0
# What a pipe takes before its reader reads: the settings are written before the exec.
PIPE_CAPACITY = 16384


def python(module: str, *args: str) -> list[str]:
    """`python -P -m module`: not from the current directory, which may hold another `proxy`.

    The package comes from where this one was loaded, through PYTHONPATH (see `exec_supervisor`).
    """
    return [sys.executable, "-P", "-m", module, *args]


def exec_supervisor(settings: Settings) -> NoReturn:
    """Replace this process (same pid) with `python -m proxy.workers`, handing it `settings`.

    OSError when the interpreter cannot be run again (e.g. one only root may reach).
    """
    data = pickle.dumps(settings)
    if len(data) > PIPE_CAPACITY:
        raise RuntimeError(f"settings too large to hand to the supervisor ({len(data)} bytes)")
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    os.set_inheritable(read_end, True)
    root = str(Path(proxy.__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, python("proxy.workers", str(read_end)))  # noqa: S606 - no shell
    except OSError:
        os.close(read_end)
        raise


def claim_port(host: str, port: int) -> list[socket.socket]:
    """Bound (not listening) SO_REUSEPORT sockets that keep the port this supervisor's.

    OSError when someone, another instance above all, already has it: the probe binds without
    SO_REUSEPORT, which fails against any socket bound there. The held sockets do not set
    SO_REUSEADDR, so a later instance's probe fails against them even before the workers listen;
    the workers (SO_REUSEPORT, same user) may still join them.
    """
    addresses = dict.fromkeys(
        (family, address)
        for family, _, _, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    )
    for family, address in addresses:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            _v6only(probe)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    held = []
    for family, address in addresses:
        holder = socket.socket(family, socket.SOCK_STREAM)
        held.append(holder)
        _v6only(holder)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(address)
    return held


def _v6only(sock: socket.socket) -> None:
    # As asyncio binds: an IPv6 address is only that, so "::" and "0.0.0.0" do not collide.
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


def supervise(settings: Settings) -> int:
    """Run `server.workers` serving processes; restart any that dies, stop all on a signal.

    SIGTERM or SIGINT is passed on to every worker as SIGTERM, so each finishes its own
    requests (`server.shutdown_grace`); the supervisor exits once all have.
    """
    server = settings.server
    try:
        held = claim_port(server.host, server.port)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", server.host, server.port, e.strerror or e)
        return 1
    shared = _shared_dir()
    # Only this process holds the write end: its end of life is the workers' EOF.
    lifeline, keep_alive = os.pipe()
    data = pickle.dumps(settings)
    workers: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    stopping = False
    status = 0

    def start() -> None:
        process = subprocess.Popen(
            python("proxy.worker", str(lifeline), str(shared) if shared else ""),
            stdin=subprocess.PIPE,
            pass_fds=(lifeline,),
        )
        assert process.stdin is not None
        try:
            process.stdin.write(data)
            process.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; the loop below sees that
        workers[process.pid] = (process, time.monotonic())

    def stop_all(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop_all) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        announce_start(settings)
        for _ in range(server.workers):
            start()
        log.info("supervising %d workers: %s", len(workers), ", ".join(map(str, workers)))
        while workers:
            pid, wait_status = os.wait()
            if pid not in workers:
                continue
            process, started = workers.pop(pid)
            process.returncode = os.waitstatus_to_exitcode(wait_status)
            if stopping:
                continue
            if time.monotonic() - started < MIN_UPTIME_SECONDS:
                log.error(
                    "worker %d exited with code %s right after starting; stopping",
                    pid,
                    process.returncode,
                )
                status = 1
                stop_all()
                continue
            log.warning("worker %d exited with code %s; starting another", pid, process.returncode)
            start()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(keep_alive)
        os.close(lifeline)
        for holder in held:
            holder.close()
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
    return status


def _shared_dir() -> Path | None:
    """A private (0700) directory where each worker publishes its counters for the others.

    In memory when /dev/shm is there; None (each worker counts alone) when nothing is writable,
    as on a read-only root file system without a temporary directory.
    """
    in_memory = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a new 0700 directory in it
    place = in_memory if os.access(in_memory, os.W_OK) else None
    try:
        return Path(tempfile.mkdtemp(prefix="gitlab-pypi-proxy-", dir=place))
    except OSError as e:
        log.warning("no directory for shared metrics (%s): each worker reports its own", e)
        return None


def main(settings_fd: int) -> int:
    with os.fdopen(settings_fd, "rb") as handed:
        settings: Settings = pickle.loads(handed.read())  # noqa: S301 - from our own exec
    setup_logging(settings.server.log_format, [settings.upstream.token])
    return supervise(settings)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
