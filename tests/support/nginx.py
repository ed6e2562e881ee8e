"""Real nginx for tests: the README's snippets, a config around them, and starting it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from tests.support.polling import listening

README = Path(__file__).parents[2] / "README.md"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
SKIP_REASON = "needs nginx (apt-get install -y nginx-light)"
README_LISTEN = "listen 80;"
# The README's replicas: `server 10.0.0.1N:8080 <parameters>;`, one line each.
_README_REPLICA = re.compile(r"^( *)server 10\.0\.0\.1\d:8080( [^;\n]*)?;\n", re.MULTILINE)


def readme_snippet(marker: str) -> str:
    """The README's one ```nginx block that contains `marker`."""
    blocks: list[str] = re.findall(r"```nginx\n(.*?)```", README.read_text(), re.DOTALL)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"the README carries exactly one nginx snippet with {marker!r}"
    return found[0]


def replaced(snippet: str, replacements: dict[str, str]) -> str:
    """`snippet` with each of the README's example values, which must occur once, replaced."""
    for example, value in replacements.items():
        assert snippet.count(example) == 1, f"the README snippet no longer has {example!r}"
        snippet = snippet.replace(example, value)
    return snippet


def balancer_snippet(port: int, replica_ports: Sequence[int]) -> str:
    """The README's replicas behind nginx, listening on `port`, one `server` line per replica."""
    snippet = readme_snippet("consistent;")
    found = list(_README_REPLICA.finditer(snippet))
    assert len(found) == 3, "the README's balancer names three replicas, one line each"
    start, end = found[0].start(), found[-1].end()
    assert snippet[start:end] == "".join(m.group(0) for m in found), "and lists them together"
    indent, parameters = found[0].group(1), found[0].group(2) or ""
    lines = "".join(f"{indent}server 127.0.0.1:{p}{parameters};\n" for p in replica_ports)
    return replaced(
        snippet[:start] + lines + snippet[end:], {README_LISTEN: f"listen 127.0.0.1:{port};"}
    )


def nginx_conf(http: str, prefix: Path, *, access_log: bool = True) -> str:
    """A whole nginx.conf running in the foreground from `prefix`, with `http` in its http {}."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, workers would otherwise drop to `nobody`, which cannot read pytest's tmp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    access = prefix / "access.log" if access_log else "off"
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {access};\n{temp}\n{http}\n}}\n"
    )


async def start_nginx(prefix: Path, port: int) -> asyncio.subprocess.Process:
    """nginx with `prefix`/nginx.conf, once it accepts connections on `port`."""
    assert NGINX is not None
    proc = await asyncio.create_subprocess_exec(
        NGINX,
        "-p",
        str(prefix),
        "-c",
        str(prefix / "nginx.conf"),
        "-e",
        str(prefix / "error.log"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await listening(proc, port):
        return proc
    log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
    raise AssertionError(f"nginx did not start:\n{log}")


async def stop_nginx(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    await asyncio.wait_for(proc.wait(), 15)
