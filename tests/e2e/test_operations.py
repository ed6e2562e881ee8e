"""Issue 12 items 7, 8, 12, 13, 14: what the proxy tells operators is true, and leaks nothing."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from proxy.access import hash_token
from tests.support import cli_process
from tests.support.cli_process import ServeProcess
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, Completed, ProxyFactory, RunningProxy, clean_env, run
from tests.support.http import basic

Serve = Callable[..., Awaitable[ServeProcess]]
PROJECT = "/api/v4/projects/42/packages/pypi"
CLIENT = "glpat-client-alice-0123456789abcdef"
OPS_TOKEN = "ops-token-for-the-status-page-0123"


async def fetch(
    url: str, headers: dict[str, str] | None = None, *, skip_headers: tuple[str, ...] = ()
) -> tuple[int, str, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, skip_auto_headers=skip_headers) as resp,
    ):
        body = await resp.read()
        return resp.status, body.decode(errors="replace"), dict(resp.headers)


@pytest.fixture
async def serve(gitlab: FakeGitLab, tmp_path: Path) -> AsyncIterator[Serve]:
    """`python -m proxy serve` in front of `gitlab`, configured by env; keywords override."""
    async with AsyncExitStack() as started:

        async def factory(**settings: str) -> ServeProcess:
            values = {
                "upstream_url": gitlab.url,
                "upstream_username": "proxy",
                "upstream_token": TOKEN,
                "cache_dir": str(tmp_path / "cache"),
                **settings,
            }
            process = await cli_process.serve(tmp_path, **values)
            return await started.enter_async_context(process)

        yield factory


async def cli(env: dict[str, str], *args: str | Path) -> Completed:
    return await run([sys.executable, "-m", "proxy", *map(str, args)], env=env)


# Item 7: a refused proxy token is said, once, everywhere an operator looks.


async def test_a_refused_proxy_token_is_logged_once_and_shown_by_ready_metrics_and_status(
    gitlab: FakeGitLab, serve: Serve, tmp_path: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.add_wheel(42, "corp-other", "1.0.0")
    # One process: the ERROR line is once a minute per worker, and here it is counted.
    proxy = await serve(server_workers="1")
    assert (await fetch(f"{proxy.url}{PROJECT}/simple/corp-util/"))[0] == 200
    file_url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    assert (await fetch(file_url))[0] == 200
    status, body, _ = await fetch(f"{proxy.url}/-/ready")
    assert (status, "refuse" in body) == (200, False)

    gitlab.revoke(TOKEN)
    for _ in range(3):
        status, body, _ = await fetch(f"{proxy.url}{PROJECT}/simple/corp-other/")
        assert status >= 400
        assert "upstream.token" in body
    # What is cached still serves, so the proxy stays ready, and says what is wrong.
    assert (await fetch(file_url))[0] == 200
    status, body, _ = await fetch(f"{proxy.url}/-/ready")
    assert status == 200
    assert "GitLab refuses the proxy's credentials (HTTP 401): check upstream.token" in body
    _, metrics, _ = await fetch(f"{proxy.url}/-/metrics")
    assert "gitlab_pypi_proxy_upstream_token_refused 1.0" in metrics
    _, page, _ = await fetch(f"{proxy.url}/-/status")
    alerts = re.search(r'<div id="alerts">(.*?)</div>', page)
    assert alerts is not None and "check upstream.token" in alerts.group(1)
    assert page.index('id="alerts"') < page.index('id="cache"')

    assert await proxy.stop() == 0
    log = proxy.log()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, log
    assert "refused the proxy's own credentials (HTTP 401): check upstream.token" in errors[0]
    assert TOKEN not in log


async def test_once_gitlab_takes_the_token_again_the_alarm_clears(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.add_wheel(42, "corp-other", "1.0.0")
    gitlab.revoke(TOKEN)
    proxy = await make_proxy()
    assert (await fetch(f"{proxy.url}{PROJECT}/simple/corp-util/"))[0] >= 400
    # Nothing cached: an inject-mode proxy whose token GitLab refuses can serve nothing.
    status, body, _ = await fetch(f"{proxy.url}/-/ready")
    assert status == 503
    assert "refuses the proxy's credentials" in body
    gitlab.revoked.discard(TOKEN)
    assert (await fetch(f"{proxy.url}{PROJECT}/simple/corp-other/"))[0] == 200
    status, body, _ = await fetch(f"{proxy.url}/-/ready")
    assert (status, "refuses" in body) == (200, False)
    _, metrics, _ = await fetch(f"{proxy.url}/-/metrics")
    assert "gitlab_pypi_proxy_upstream_token_refused 0.0" in metrics


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_start_up_says_upstream_mode_token_cache_and_address_after_binding(
    gitlab: FakeGitLab, serve: Serve, tmp_path: Path, workers: str
) -> None:
    proxy = await serve(upstream_credentials="prefer-client", server_workers=workers)
    assert await proxy.stop() == 0
    lines = [line for line in proxy.log().splitlines() if " serving http://" in line]
    assert len(lines) == 1, proxy.log()
    line = lines[0]
    assert f"serving http://127.0.0.1:{proxy.port}/ in front of {gitlab.url}" in line
    assert "credentials = prefer-client" in line
    assert "upstream token set" in line
    assert str((tmp_path / "cache").resolve()) in line
    assert TOKEN not in proxy.log()


async def test_a_port_taken_is_an_error_without_a_serving_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(GITLAB_PYPI_PROXY_CACHE_DIR=str(tmp_path / "cache"))
        result = await cli(env, "serve", "--port", str(port))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "serving http://" not in result.stderr


# Item 8: Kubernetes' service links in the environment.

SERVICE_LINKS = {
    "service_host": "10.96.0.12",
    "service_port": "8080",
    "service_port_http": "8080",
    "port": "tcp://10.96.0.12:8080",
    "port_8080_tcp": "tcp://10.96.0.12:8080",
    "port_8080_tcp_proto": "tcp",
    "port_8080_tcp_port": "8080",
    "port_8080_tcp_addr": "10.96.0.12",
    # A second Service, gitlab-pypi-proxy-cache, gives names below a section's.
    "cache_service_host": "10.96.0.13",
    "cache_port_8080_tcp_addr": "10.96.0.13",
}


async def test_kubernetes_service_variables_do_not_stop_start_up(
    gitlab: FakeGitLab, serve: Serve
) -> None:
    # One worker: the variables are read once, before any worker starts.
    proxy = await serve(**SERVICE_LINKS, server_workers="1")
    assert (await fetch(f"{proxy.url}/-/ready"))[0] == 200
    assert await proxy.stop() == 0


async def test_an_unknown_key_in_a_known_section_stops_start_up_and_suggests(
    tmp_path: Path,
) -> None:
    env = clean_env(
        GITLAB_PYPI_PROXY_SERVER_PROT="8081",
        **{f"GITLAB_PYPI_PROXY_{k.upper()}": v for k, v in SERVICE_LINKS.items()},
    )
    result = await cli(env, "serve")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "gitlab-pypi-proxy: config error: GITLAB_PYPI_PROXY_SERVER_PROT: unknown setting; "
        "did you mean GITLAB_PYPI_PROXY_SERVER_PORT?"
    )
    config = tmp_path / "c.toml"
    config.write_text("[upstream]\ntokn = 'x'\n[cache]\n")
    result = await cli(clean_env(), "--config", config, "serve")
    assert result.returncode == 2
    assert "upstream.tokn: unknown key; did you mean upstream.token?" in result.stderr
    config.write_text("[servr]\nport = 1\n")
    result = await cli(clean_env(), "--config", config, "serve")
    assert "servr: unknown section; did you mean server?" in result.stderr


# Item 12: the status page names nothing to a caller who may not see names.


async def passthrough_with_history(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, **access: object
) -> tuple[RunningProxy, str]:
    """A passthrough proxy after Alice fetched a private wheel and GitLab failed once."""
    gitlab.tokens[CLIENT] = {42}
    wheel = gitlab.add_wheel(42, "corp-secret-util", "1.0.0")
    proxy = await make_proxy(upstream={"credentials": "passthrough", "token": ""}, access=access)
    alice = {"Authorization": basic(CLIENT)}
    assert (await fetch(f"{proxy.url}{PROJECT}/simple/corp-secret-util/", alice))[0] == 200
    file_url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    assert (await fetch(file_url, alice))[0] == 200
    gitlab.fail_status = 503
    assert (await fetch(f"{proxy.url}{PROJECT}/simple/corp-secret-new/", alice))[0] == 503
    gitlab.fail_status = None
    return proxy, wheel.filename


async def test_status_page_in_passthrough_shows_counts_but_no_names_to_others(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    proxy, filename = await passthrough_with_history(gitlab, make_proxy)
    private = ("corp-secret", filename, "projects/42", "platform/tools")
    for who in (
        {},
        {"Authorization": basic("glpat-refused-by-gitlab")},
        {"Authorization": basic(CLIENT)},
    ):
        status, page, _ = await fetch(f"{proxy.url}/-/status", who)
        assert status == 200
        assert not [name for name in private if name in page], page
        assert "1 packages requested" in page
        assert "1 recent errors" in page
        assert 'id="cache-files"' in page
    status, metrics, _ = await fetch(f"{proxy.url}/-/metrics")
    assert status == 200 and "gitlab_pypi_proxy_requests" in metrics
    assert not [name for name in private if name in metrics]
    assert (await fetch(f"{proxy.url}/-/health"))[0] == 200


async def test_status_page_in_passthrough_shows_everything_to_an_operator_token(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    proxy, _ = await passthrough_with_history(
        gitlab, make_proxy, ops_tokens=(hash_token(OPS_TOKEN, n=2**10),)
    )
    for header in (basic(OPS_TOKEN, "ops"), f"Bearer {OPS_TOKEN}"):
        status, page, headers = await fetch(f"{proxy.url}/-/status", {"Authorization": header})
        assert status == 200
        assert "corp-secret-util" in page
        assert "/api/v4/projects/42/packages/pypi/simple/corp-secret-new" in page
        assert "no-store" in headers["Cache-Control"]
    _, page, _ = await fetch(f"{proxy.url}/-/status", {"Authorization": basic("not-ops", "ops")})
    assert "corp-secret-util" not in page


async def test_status_page_in_inject_mode_shows_the_proxys_own_view_to_its_callers(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy()
    assert (await fetch(f"{proxy.url}{PROJECT}/simple/corp-util/"))[0] == 200
    # Anyone who may call this proxy reads that index through it anyway.
    assert "corp-util" in (await fetch(f"{proxy.url}/-/status"))[1]


async def test_a_bad_ops_token_line_stops_start_up(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[access]\nops_tokens = ['scrypt$not-a-hash']\n")
    result = await cli(
        clean_env(GITLAB_PYPI_PROXY_CACHE_DIR=str(tmp_path)), "--config", config, "serve"
    )
    assert result.returncode == 2
    assert "access.ops_tokens: entry 1" in result.stderr


# Item 13: redaction blanks credentials where they are, not words that look like a token.


async def test_logs_blank_credentials_where_they_occur_and_leave_words_alone(
    gitlab: FakeGitLab, serve: Serve
) -> None:
    gitlab.tokens["pypi"] = None
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    # One process: a worker sets up the same redacting log as a lone process does.
    proxy = await serve(upstream_token="pypi", upstream_username="pypi-user", server_workers="1")
    assert (await fetch(f"{proxy.url}{PROJECT}/simple/corp-util/"))[0] == 200
    oversized = "glpat-oversized-" + "S" * 9000
    raw = (f"GET /-/health HTTP/1.1\r\nHost: x\r\nPrivate-Token: {oversized}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(raw)
        assert sock.recv(100).startswith(b"HTTP/1.")
    agent = "agent/" + "u" * 5000
    assert (await fetch(f"{proxy.url}/-/health", {"User-Agent": agent}))[0] == 200
    assert await proxy.stop() == 0

    log = proxy.log()
    assert "gitlab-pypi-proxy" in log
    assert "[REDACTED]-proxy" not in log
    assert f"{PROJECT}/simple/corp-util/" in log
    assert "upstream.token is only 4 characters" in log
    assert "glpat-oversized" not in log and "SSSSSSSS" not in log
    assert "Got more than" in log  # aiohttp's error is kept, its quote of the header is not
    agent_lines = [line for line in log.splitlines() if "agent/uuu" in line]
    assert len(agent_lines) == 1
    assert len(agent_lines[0]) < 500


# Item 14: a command line that fits people's habits.


async def test_version_and_every_subcommands_help_say_what_it_does(tmp_path: Path) -> None:
    env = clean_env()
    result = await cli(env, "--version")
    assert result.returncode == 0
    assert re.fullmatch(r"gitlab-pypi-proxy \d+\.\d+\S*\n", result.stdout)
    commands = ("serve", "warm", "export", "import", "hash-token", "verify", "gc")
    # At once: each is an interpreter start-up, and they are independent.
    helps = await asyncio.gather(*(cli(env, command, "--help") for command in commands))
    for result in helps:
        assert result.returncode == 0
        assert not re.search(r"\b[A-Z]+_[A-Z_]+\b(?<!GITLAB_PYPI_PROXY_CONFIG)", result.stdout), (
            result.stdout
        )
        description = result.stdout.split("\n\n")[1]
        assert description[0].isupper() and description.rstrip().endswith("."), result.stdout


async def test_gc_export_and_import_speak_in_sizes_and_show_progress(
    gitlab: FakeGitLab, serve: Serve, tmp_path: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    # The server only fills the cache the commands below work on: one worker is enough.
    proxy = await serve(server_workers="1")
    assert (await fetch(f"{proxy.url}{PROJECT}/simple/corp-util/"))[0] == 200
    assert (await fetch(f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"))[0] == 200
    assert await proxy.stop() == 0
    env = clean_env(GITLAB_PYPI_PROXY_CACHE_DIR=str(tmp_path / "cache"))

    result = await cli(env, "gc")
    assert result.returncode == 0
    assert re.search(r"cache now [\d.]+ (bytes|kB|MB) of 20 GiB;", result.stdout), result.stdout

    result = await cli(env, "verify", "--quiet")
    assert result.returncode == 0
    assert re.search(r"verified 2 files \([\d.]+ (bytes|kB)\)", result.stdout), result.stdout

    bundle = tmp_path / "b.tar"
    result = await cli(env, "export", "--out", bundle)
    assert result.returncode == 0, result.stderr
    assert re.search(r"exporting .*━.* [\d.]+/[\d.]+ (bytes|kB)", result.stderr), result.stderr
    other = clean_env(GITLAB_PYPI_PROXY_CACHE_DIR=str(tmp_path / "other"))
    result = await cli(other, "import", bundle)
    assert result.returncode == 0, result.stderr
    assert re.search(r"verifying and importing .*━", result.stderr), result.stderr


async def test_the_root_and_a_bare_simple_show_the_url_layout(
    make_proxy: ProxyFactory,
) -> None:
    proxy = await make_proxy(server={"public_url": "https://pypi.corp.example/"})
    for path, expected in (("/", 200), ("/simple/", 404), ("/simple", 404)):
        status, page, headers = await fetch(proxy.url + path, {"Host": "evil.example"})
        assert status == expected
        assert headers["Content-Type"].startswith("text/html")
        assert (
            "https://pypi.corp.example/api/v4/projects/&lt;project id or url-encoded path&gt;"
            "/packages/pypi/simple/" in page
        )
        assert (
            "https://pypi.corp.example/api/v4/groups/&lt;group id&gt;/-/packages/pypi/simple/"
            in page
        )
        assert "evil.example" not in page

    bare = await make_proxy(cache_dir=proxy.settings.cache.dir.parent / "bare")
    _, page, headers = await fetch(bare.url + "/")
    assert f"{bare.url}/api/v4/groups/" in page
    assert headers["Cache-Control"] == "no-store"
    _, page, _ = await fetch(bare.url + "/", {"Host": '"><script>alert(1)</script>'})
    assert "<script>" not in page
    assert "http://PROXY-HOST:PORT/api/v4/projects/" in page
