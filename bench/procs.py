"""Starting and stopping the bench's servers: fake GitLab, the proxy, proxpi, nginx."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.support.harness import clean_env
from tests.support.nginx import balancer_snippet, nginx_conf

REPO = Path(__file__).resolve().parent.parent
BENCH_VENV = REPO / "bench" / ".venv"
PROXPI_VERSION = "1.3.1"
USERNAME = "bench"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child, before exec: the kernel sends it SIGTERM when the bench dies, however."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    url: str
    proc: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.proc.pid


class Processes:
    """Every process the bench starts, each in its own process group, all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[asyncio.subprocess.Process] = []

    async def spawn(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        stdout: int | None = None,
    ) -> asyncio.subprocess.Process:
        log = (self.logs / f"{name}.log").open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdout=stdout if stdout is not None else log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                env=dict(env) if env is not None else clean_env(),
                cwd=REPO,
                # Its own group: Ctrl-C reaches only us, and we stop the group (workers too).
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()
        self.running.append(proc)
        return proc

    async def stop(self, proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        with contextlib.suppress(ValueError):
            self.running.remove(proc)

    async def kill(self, proc: asyncio.subprocess.Process) -> None:
        """SIGKILL to its group: gone without a word, as when its machine dies."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        with contextlib.suppress(ValueError):
            self.running.remove(proc)

    async def stop_all(self) -> None:
        for proc in list(reversed(self.running)):
            await self.stop(proc)

    def kill_all_now(self) -> None:
        """Last resort from a signal or atexit: no event loop needed."""
        for proc in self.running:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


async def wait_ready(url: str, proc: asyncio.subprocess.Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{url}: process exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f}s")


async def start_upstream(procs: Processes, data_dir: Path, token: str) -> Server:
    proc = await procs.spawn(
        "upstream",
        [sys.executable, "-m", "bench.upstream", str(data_dir), token],
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line:
        raise RuntimeError("fake GitLab did not start; see its log")
    return Server("gitlab", json.loads(line)["url"], proc)


async def start_proxy(
    procs: Processes,
    upstream: str,
    token: str,
    cache_dir: Path,
    name: str = "proxy",
    access_log: bool | None = None,
    workers: int | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Server:
    """`python -m proxy serve` as a user runs it; `access_log`/`workers` override the defaults,
    `extra_env` adds variables (a `[storage]` section and its AWS credentials)."""
    port = free_port()
    env = clean_env(
        GITLAB_PYPI_PROXY_UPSTREAM_URL=upstream,
        GITLAB_PYPI_PROXY_UPSTREAM_USERNAME=USERNAME,
        GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=token,
        GITLAB_PYPI_PROXY_CACHE_DIR=str(cache_dir),
        **(extra_env or {}),
    )
    if access_log is not None:
        env["GITLAB_PYPI_PROXY_SERVER_ACCESS_LOG"] = str(access_log).lower()
    if workers is not None:
        env["GITLAB_PYPI_PROXY_SERVER_WORKERS"] = str(workers)
    proc = await procs.spawn(
        name,
        [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    await wait_ready(f"{url}/-/health", proc)
    return Server(name, url, proc)


def missing_requirements(figures: frozenset[int]) -> list[str]:
    """What `figures` need and this machine lacks, each with how to get it; empty when ready.

    Checked before the first figure, so a run does not die half-way (it did, in the report,
    for a project installed without its test extras: no uv).
    """
    missing = []
    needed = [("pip", 7), ("uv", 7), ("pip", 9)]
    for tool, figure in needed:
        if figure in figures and not (Path(sys.executable).parent / tool).exists():
            missing.append(
                f"{tool} next to {sys.executable} (figure {figure} installs with it): "
                "pip install -e '.[test]'"
            )
    for figure in (9, 11):
        if figure in figures and importlib.util.find_spec("moto") is None:
            missing.append(f"moto (figure {figure} runs its S3 server): pip install -e '.[test]'")
    return sorted(set(missing))


def optional_tools(wrk: str | None, nginx: str | None) -> list[str]:
    """What the run goes on without, and what that costs."""
    notes = []
    if wrk is None:
        notes.append(
            "wrk not found: an aiohttp load loop measures throughput instead (slower than "
            "every server here, so ratios shrink toward 1); apt-get install wrk"
        )
    if nginx is None:
        notes.append("nginx not found: its columns read n/a; apt-get install nginx-light")
    return notes


def ensure_bench_venv(with_profiler: bool = False) -> Path:
    """bench/.venv with proxpi and gunicorn (and py-spy to profile), from PyPI."""
    python = BENCH_VENV / "bin" / "python"
    wanted = [f"proxpi=={PROXPI_VERSION}", "gunicorn"]
    if with_profiler:
        wanted.append("py-spy")
    if not python.exists():
        _check_call([sys.executable, "-m", "venv", str(BENCH_VENV)])
    missing = [
        w
        for w in wanted
        if not (BENCH_VENV / "bin" / w.split("==")[0]).exists()
        and not list((BENCH_VENV / "lib").glob(f"python*/site-packages/{w.split('==')[0]}"))
    ]
    if missing:
        print(f"installing {', '.join(missing)} into {BENCH_VENV}", flush=True)
        _check_call([str(python), "-m", "pip", "install", "-q", *missing])
    return BENCH_VENV


def _check_call(args: Sequence[str]) -> None:
    subprocess.run(args, check=True, env=clean_env())


async def start_proxpi(procs: Processes, index_url: str, cache_dir: Path) -> Server:
    port = free_port()
    env = clean_env(
        PROXPI_INDEX_URL=index_url,
        PROXPI_CACHE_DIR=str(cache_dir),
        PROXPI_EXTRA_INDEX_URLS="",
    )
    gunicorn = BENCH_VENV / "bin" / "gunicorn"
    # The reference figure: 2 workers x 8 threads.
    args = [str(gunicorn), "-w", "2", "--threads", "8", "-b", f"127.0.0.1:{port}"]
    proc = await procs.spawn("proxpi", [*args, "proxpi.server:app"], env=env)
    url = f"http://127.0.0.1:{port}"
    await wait_ready(f"{url}/health", proc)
    return Server("proxpi", url, proc)


NGINX_CONF = """\
{user}
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    open_file_cache max=1000 inactive=60s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ text/html html; application/vnd.pypi.simple.v1+json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location /blobs/ {{ root {cache_dir}; }}
        location /static/ {{ root {static_parent}; }}
    }}
}}
"""


def nginx_binary() -> str | None:
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing nginx-light (apt-get)", flush=True)
        _apt_install("nginx-light")
        found = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
    return found


def wrk_binary() -> str | None:
    found = shutil.which("wrk")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get)", flush=True)
        _apt_install("wrk")
        found = shutil.which("wrk")
    return found


def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True, check=False
    )
    if done.returncode != 0:
        print(f"apt-get install {package} failed; going on without it", flush=True)


async def start_nginx(
    procs: Processes,
    binary: str,
    prefix: Path,
    cache_dir: Path,
    static: Path,
    workers: str = "auto",
) -> Server:
    port = free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            # As root, workers would run as nobody; the bench's files are the invoking user's.
            user="user root;" if os.geteuid() == 0 else "",
            prefix=prefix,
            workers=workers,
            port=port,
            cache_dir=cache_dir,
            static_parent=static.parent,
        )
    )
    name = f"nginx-{workers}"
    proc = await procs.spawn(name, [binary, "-p", str(prefix), "-c", str(conf)])
    url = f"http://127.0.0.1:{port}"
    await wait_ready(f"{url}/static/", proc)
    return Server(name, url, proc)


async def start_balancer(
    procs: Processes, binary: str, prefix: Path, replicas: Sequence[Server]
) -> Server:
    """nginx with the README's consistent-hash config in front of `replicas` (no access log)."""
    port = free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    balancer = balancer_snippet(port, [int(r.url.rsplit(":", 1)[1]) for r in replicas])
    conf.write_text(nginx_conf(balancer, prefix, access_log=False))
    name = f"balancer-{len(replicas)}"
    proc = await procs.spawn(name, [binary, "-p", str(prefix), "-c", str(conf)])
    url = f"http://127.0.0.1:{port}"
    await wait_ready(f"{url}/-/health", proc)
    return Server(name, url, proc)
