"""Real HAProxy for tests: the README's snippet, a config around it, and starting it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from tests.support.nginx import README, replaced
from tests.support.polling import listening

HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
)
SKIP_REASON = "needs haproxy (apt-get install -y haproxy)"
README_BIND = "bind :80"
# The README's replicas: `server replicaN 10.0.0.1N:8080 <parameters>`, one line each.
_README_REPLICA = re.compile(r"^ *server \S+ (10\.0\.0\.1\d:8080)\b", re.MULTILINE)
# Around the README's frontend and backend: a log of each request (and of each replica found
# down) on stderr, without the lines of connections that send nothing, as the readiness probe.
_AROUND = """global
    log stderr format raw local0 info

defaults
    log global
    option httplog
    option dontlognull

"""


def readme_snippet() -> str:
    """The README's one ```haproxy block."""
    blocks: list[str] = re.findall(r"```haproxy\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) == 1, "the README carries exactly one haproxy snippet"
    return blocks[0]


def haproxy_cfg(port: int, replica_ports: Sequence[int]) -> str:
    """A whole haproxy.cfg: the README's balancer on `port`, in front of these replicas."""
    snippet = readme_snippet()
    addresses = _README_REPLICA.findall(snippet)
    assert len(addresses) == 3, "the README's balancer names three replicas, one line each"
    replicas = {a: f"127.0.0.1:{p}" for a, p in zip(addresses, replica_ports, strict=True)}
    return _AROUND + replaced(snippet, {README_BIND: f"bind 127.0.0.1:{port}", **replicas})


async def start_haproxy(cfg: Path, port: int, log: Path) -> asyncio.subprocess.Process:
    """HAProxy with `cfg`, logging to `log`, once it accepts connections on `port`.

    A config HAProxy warns about fails here: the README's snippet must be one it takes as is.
    """
    assert HAPROXY is not None
    check = await asyncio.create_subprocess_exec(
        HAPROXY,
        "-c",
        "-f",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await check.communicate())[0].decode()
    assert check.returncode == 0 and "[WARNING]" not in out, f"haproxy -c:\n{out}"
    with log.open("wb") as sink:
        # -db: in the foreground, not a daemon, so the test owns the process and its end.
        proc = await asyncio.create_subprocess_exec(
            HAPROXY, "-f", str(cfg), "-db", stdout=sink, stderr=asyncio.subprocess.STDOUT
        )
    if await listening(proc, port):
        return proc
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    raise AssertionError(f"haproxy did not start:\n{log.read_text()}")


async def stop_haproxy(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    await asyncio.wait_for(proc.wait(), 15)
