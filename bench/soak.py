"""Soak: many concurrent clients through a real proxy process while the fake GitLab flaps.

Not part of the CI suite. Run from the repository root:

    .venv/bin/python -m bench.soak --seconds 60 --clients 200 [--workers 2]

Prints requests served, status counts, corrupt bodies (must be 0), 500s (must be 0) and the
proxy's RSS at start and end; exits non-zero if a corrupt body or a 500 was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.support.cli_process import ServeProcess, children_of, free_port, write_config
from tests.support.fake_gitlab import FakeFile, FakeGitLab

TOKEN = "glpat-soak-token"
PROJECT = "/api/v4/projects/42/packages/pypi"
# (name, share of time): what the fake GitLab does in each flap period.
MODES = [
    ("healthy", 0.45),
    ("down", 0.1),
    ("500", 0.1),
    ("429", 0.1),
    ("slow", 0.1),
    ("truncate", 0.05),
    ("drop", 0.05),
    ("corrupt", 0.05),
]


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    cache_states: Counter[str] = field(default_factory=Counter)
    corrupt: int = 0
    served: int = 0
    modes: Counter[str] = field(default_factory=Counter)


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (workers), in KiB."""
    total = 0
    for each in [pid, *children_of(pid)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def publish(gitlab: FakeGitLab, packages: int) -> list[FakeFile]:
    rng = random.Random(4)
    files = []
    for i in range(packages):
        for version in ("1.0.0", "1.1.0"):
            size = rng.choice([0, 20_000, 200_000, 1_000_000, 3_000_000])
            files.append(gitlab.add_wheel(42, f"soak-pkg{i}", version, payload_size=size))
    return files


def set_mode(gitlab: FakeGitLab, mode: str) -> None:
    gitlab.down = mode == "down"
    gitlab.fail_status = {"500": 500, "429": 429}.get(mode)
    gitlab.retry_after = 2
    gitlab.delay = 3.0 if mode == "slow" else 0.0
    gitlab.truncate_files = mode == "truncate"
    gitlab.drop_files = mode == "drop"
    gitlab.corrupt_files = mode == "corrupt"


async def flap(gitlab: FakeGitLab, until: float, period: float, tally: Tally) -> None:
    rng = random.Random(7)
    names, weights = zip(*MODES, strict=True)
    while time.monotonic() < until:
        mode = rng.choices(names, weights)[0]
        tally.modes[mode] += 1
        set_mode(gitlab, mode)
        await asyncio.sleep(period)
    set_mode(gitlab, "healthy")


async def client(
    session: aiohttp.ClientSession,
    base: str,
    files: list[FakeFile],
    packages: int,
    until: float,
    seed: int,
    tally: Tally,
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        if rng.random() < 0.4:
            name = f"soak-pkg{rng.randrange(packages)}"
            kind, url, expect = "page", f"{base}{PROJECT}/simple/{name}/", None
        else:
            wheel = rng.choice(files)
            url = f"{base}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
            kind, expect = "file", wheel.sha256
        try:
            async with session.get(url) as resp:
                body = await resp.read()
                tally.statuses[str(resp.status)] += 1
                tally.cache_states[f"{kind} {resp.status} {resp.headers.get('X-Cache', '-')}"] += 1
                if resp.status == 200:
                    tally.served += 1
                    if expect is not None and hashlib.sha256(body).hexdigest() != expect:
                        tally.corrupt += 1
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            # A cut transfer: what the proxy does with a file that failed upstream.
            tally.statuses["cut"] += 1
            tally.cache_states[f"{kind} cut"] += 1
        except (aiohttp.ClientError, TimeoutError) as e:
            tally.statuses[f"client error {type(e).__name__}"] += 1


async def soak(args: argparse.Namespace) -> int:
    gitlab = FakeGitLab(token=TOKEN)
    gitlab.add_group(7, "platform")
    gitlab.add_project(42, "platform/tools", group_id=7)
    gitlab.file_chunk_size = 256 * 1024
    files = publish(gitlab, args.packages)
    total = sum(len(f.content) for f in files)
    await gitlab.start()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        port = free_port()
        config = write_config(
            Path(tmp) / "soak.toml",
            {
                "server": {"port": port, "workers": args.workers},
                "upstream": {
                    "url": gitlab.url,
                    "username": "soak",
                    "token": TOKEN,
                    "timeout": 2,
                    "retry_interval": 2,
                },
                # Smaller than all files together, so eviction runs under load too.
                "cache": {"dir": f"{tmp}/cache", "index_ttl": 3, "max_size": total * 2 // 3},
            },
        )
        proxy = await ServeProcess.from_config(config, port)
        try:
            rss_start = rss_kib(proxy.pid)
            tally = Tally()
            started = time.monotonic()
            until = started + args.seconds
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                await asyncio.gather(
                    flap(gitlab, until, args.flap, tally),
                    *(
                        client(session, proxy.url, files, args.packages, until, i, tally)
                        for i in range(args.clients)
                    ),
                )
            elapsed = time.monotonic() - started
            rss_end = rss_kib(proxy.pid)
        finally:
            await proxy.close()
            await gitlab.stop()
        proxy_log = proxy.log()
        log_tail = proxy_log.count("Traceback")
        locked = proxy_log.count("database is locked")
        if log_tail:
            first = proxy_log.index("Traceback")
            print(
                "first traceback in the proxy's log:\n"
                + proxy_log[max(0, first - 300) : first + 3000]
            )
    requests = sum(tally.statuses.values())
    print(f"clients: {args.clients}, workers: {args.workers}, seconds: {elapsed:.0f}")
    print(f"files: {len(files)} ({total / 1e6:.1f} MB), max_size {total * 2 // 3 / 1e6:.1f} MB")
    print(f"upstream modes (periods of {args.flap}s): {dict(tally.modes)}")
    print(f"requests: {requests} ({requests / elapsed:.0f}/s), served 200: {tally.served}")
    print(f"status counts: {dict(sorted(tally.statuses.items()))}")
    print(f"by kind, status, X-Cache: {dict(sorted(tally.cache_states.items()))}")
    print(f"upstream requests: {dict(gitlab.counts)}")
    print(f"corrupt bodies: {tally.corrupt}")
    print(f"500s from the proxy: {tally.statuses['500']}")
    print(f"tracebacks in the proxy's log: {log_tail}; 'database is locked': {locked}")
    print(f"proxy RSS: start {rss_start / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB")
    return 1 if tally.corrupt or tally.statuses["500"] or log_tail else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--packages", type=int, default=20)
    parser.add_argument("--flap", type=float, default=2.0, help="seconds per upstream mode")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
