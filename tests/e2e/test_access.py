"""Issue 3, access control: hashed proxy tokens (`hash-token`) and the `allow` list of scopes."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.access import hash_token, parse_token_line
from proxy.config import ConfigError, load_settings
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, ProxyFactory, RunningProxy, clean_env, pip_install, run
from tests.support.http import PROJECT, fetch_as_written

OFFICE = "office-token-7f3a9c1e"
PAGE = "/api/v4/projects/42/packages/pypi/simple/corp-util/"


def basic(secret: str, user: str = "anyone") -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


async def status_of(url: str, authorization: str | None = None) -> tuple[int, dict[str, str]]:
    headers = {"Authorization": authorization} if authorization else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, dict(resp.headers)


async def hashed_by_cli(token: str) -> str:
    """The real `gitlab-pypi-proxy hash-token`, reading the token on stdin."""
    result = await run(
        ["sh", "-c", f'printf "%s\\n" "$T" | "{sys.executable}" -m proxy hash-token'],
        env=clean_env(T=token),
    )
    result.check()
    return result.stdout.strip()


@pytest.fixture
async def guarded(gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path) -> RunningProxy:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# the office\n{await hashed_by_cli(OFFICE)}\n\n{hash_token('other')}\n")
    return await make_proxy(access={"tokens_file": str(tokens)})


async def test_hash_token_lines_verify_only_their_token() -> None:
    line = await hashed_by_cli(OFFICE)
    assert OFFICE not in line
    parsed = parse_token_line(line)
    assert parsed.matches(OFFICE)
    assert not parsed.matches(OFFICE + "x")
    # Salted: the same token never hashes to the same line twice.
    assert line != await hashed_by_cli(OFFICE)


async def test_tokens_file_requires_one_of_its_tokens(
    gitlab: FakeGitLab, guarded: RunningProxy, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    status, headers = await status_of(guarded.url + PAGE)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic realm=")
    assert (await status_of(guarded.url + PAGE, basic("wrong")))[0] == 401
    assert (await status_of(guarded.url + PAGE, "Basic bm8tY29sb24="))[0] == 400
    assert gitlab.requests == []
    assert (await status_of(guarded.url + PAGE, basic(OFFICE)))[0] == 200
    assert (await status_of(guarded.url + PAGE, basic("other", "bob")))[0] == 200
    # Probes need no token.
    assert (await status_of(guarded.url + "/-/health"))[0] == 200
    # pip with the token in its index URL installs; GitLab only ever sees the proxy's token.
    index = guarded.index_url("projects/42").replace("http://", f"http://me:{OFFICE}@")
    (await pip_install(index, tmp_path / "t", "corp-util")).check()
    assert {r.headers["Authorization"] for r in gitlab.requests} == {basic(TOKEN, "proxy")}


async def test_uploads_behind_a_tokens_file_need_injected_upload_credentials(
    gitlab: FakeGitLab, guarded: RunningProxy
) -> None:
    form = aiohttp.FormData()
    form.add_field("name", "corp-util")
    form.add_field("version", "1.0.0")
    form.add_field("content", b"zz", filename="corp_util-1.0.0.tar.gz")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            guarded.url + "/api/v4/projects/42/packages/pypi",
            data=form,
            headers={"Authorization": basic(OFFICE)},
        ) as resp,
    ):
        assert resp.status == 403
        assert "upload_credentials" in (await resp.json())["message"]
    assert gitlab.requests == []


async def test_allow_limits_the_scopes_served(gitlab: FakeGitLab, make_proxy: ProxyFactory) -> None:
    gitlab.add_project(99, "elsewhere/thing")
    gitlab.tokens[TOKEN] = None
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy(access={"allow": ("groups/platform", "projects/99")})
    base = proxy.url + "/api/v4"
    for path, expected in [
        ("/groups/platform/-/packages/pypi/simple/", 200),
        ("/groups/Platform/-/packages/pypi/simple/corp-util/", 200),
        ("/projects/platform%2Ftools/packages/pypi/simple/corp-util/", 200),
        ("/projects/99/packages/pypi/simple/", 200),
        ("/projects/42/packages/pypi/simple/corp-util/", 404),
        ("/groups/7/-/packages/pypi/simple/", 404),
        ("/groups/platformer/-/packages/pypi/simple/", 404),
        ("/projects/elsewhere%2Fthing/packages/pypi/simple/", 404),
    ]:
        before = len(gitlab.requests)
        assert (await status_of(base + path))[0] == expected, path
        if expected == 404:
            assert len(gitlab.requests) == before, f"{path} reached GitLab"


def test_config_refuses_tokens_file_with_client_credentials(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(hash_token("x") + "\n")
    env = {
        "GITLAB_PYPI_PROXY_ACCESS_TOKENS_FILE": str(tokens),
        "GITLAB_PYPI_PROXY_UPSTREAM_CREDENTIALS": "passthrough",
    }
    with pytest.raises(ConfigError, match=r"^access\.tokens_file: needs upstream\.credentials"):
        load_settings(None, env=env)


async def test_bad_tokens_file_stops_start_up_naming_the_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# fine\nscrypt$16384$8$1$notbase64!$x\n")
    result = await run(
        [sys.executable, "-m", "proxy", "serve", "--port", "1"],
        env=clean_env(GITLAB_PYPI_PROXY_ACCESS_TOKENS_FILE=str(tokens)),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "gitlab-pypi-proxy: config error: access.tokens_file: line 2: "
        "parameters or base64 are malformed"
    )


@pytest.mark.parametrize(
    "prefix", ["/%61pi/v4/projects/43", "/api/v%34/projects/43", "/%61pi/v4/groups/99"]
)
async def test_allow_list_holds_however_the_route_prefix_is_spelled(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, prefix: str
) -> None:
    """The router decodes `%61pi` to `api`; the allow check must see the same route."""
    gitlab.add_project(43, "platform/secret", group_id=7)
    gitlab.add_group(99, "other")
    gitlab.add_project(44, "other/thing", group_id=99)
    gitlab.add_wheel(43, "secret-pkg", "1.0.0")
    gitlab.add_wheel(44, "secret-pkg", "1.0.0")
    proxy = await make_proxy(access={"allow": ["projects/42"]})
    middle = "/-/packages/pypi" if "groups" in prefix else "/packages/pypi"
    status, _, body = await fetch_as_written(f"{proxy.url}{prefix}{middle}/simple/secret-pkg/")
    assert status == 404
    assert b"secret-pkg" not in body
    assert gitlab.requests == []


async def test_a_tokens_file_guards_every_route_but_the_probes(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    tokens = tmp_path / "tokens"
    tokens.write_text(hash_token("office", n=2**4) + "\n")
    proxy = await make_proxy(access={"tokens_file": str(tokens)})
    files = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    assert (await fetch_as_written(files, {"Authorization": basic("office")}))[0] == 200
    guarded = [
        files,
        files + ".metadata",
        f"{proxy.url}{PROJECT}/simple/",
        f"{proxy.url}/%61pi/v4/projects/42/packages/pypi/simple/corp-util/",
        f"{proxy.url}/-/metrics",
        f"{proxy.url}/-/status",
        f"{proxy.url}/no/such/route",
    ]
    before = len(gitlab.requests)
    for url in guarded:
        for headers in ({}, {"Authorization": basic("not-office")}):
            status, _, body = await fetch_as_written(url, headers)
            assert status == 401, url
            assert wheel.content[:32] not in body and b"corp" not in body
    status, _, _ = await fetch_as_written(f"{proxy.url}{PROJECT}", method="POST")
    assert status == 401
    assert len(gitlab.requests) == before
    for probe in ("/-/health", "/-/ready"):
        assert (await fetch_as_written(proxy.url + probe))[0] == 200


async def test_allow_covers_files_metadata_and_uploads_of_other_scopes(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.add_project(43, "platform/secret", group_id=7)
    hidden = gitlab.add_wheel(43, "secret-pkg", "1.0.0")
    proxy = await make_proxy(access={"allow": ["projects/42"]})
    for scope in ("projects/43", "projects/platform%2Fsecret", "projects/4%33", "groups/7"):
        api = f"{proxy.url}/api/v4/{scope}/{'-/' if 'groups' in scope else ''}packages/pypi"
        url = f"{api}/files/{hidden.sha256}/{hidden.filename}"
        for target in (url, url + ".metadata"):
            status, _, body = await fetch_as_written(target)
            assert status == 404, target
            assert hidden.content[:32] not in body
        if scope.startswith("projects"):
            status, _, _ = await fetch_as_written(api, {"Authorization": basic("x")}, method="POST")
            assert status == 404
    assert gitlab.requests == []


@pytest.mark.parametrize(
    "raw_id", ["platform%2F..%2Fother", "platform%2F.%2Fsecret", "platform%2F%2Fsecret", "%2e%2e"]
)
async def test_dot_segments_in_an_id_are_refused_before_the_allow_list_or_gitlab(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, raw_id: str
) -> None:
    """`groups/platform%2F..%2Fother` would pass `allow = ["groups/platform"]` by its prefix."""
    proxy = await make_proxy(access={"allow": ["groups/platform"]})
    status, _, body = await fetch_as_written(
        f"{proxy.url}/api/v4/groups/{raw_id}/-/packages/pypi/simple/"
    )
    assert status == 400
    assert b"path segment" in body
    assert gitlab.requests == []
