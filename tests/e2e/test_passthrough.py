"""Issue 3, credentials: in passthrough and prefer-client no client sees what only another may."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from pathlib import Path

import pytest

from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, ProxyFactory, RunningProxy, pip_install
from tests.support.http import PROJECT, basic, fetch_as_written, get_authorized, scope_file_url

ALICE = "glpat-alice-reads-42-and-43"
BOB = "glpat-bob-reads-nothing"
CAROL = "glpat-carol-reads-42-only"
PAGE = "/api/v4/projects/42/packages/pypi/simple/corp-util/"
GROUP = "/api/v4/groups/7/-/packages/pypi"


@pytest.fixture
async def passthrough(gitlab: FakeGitLab, make_proxy: ProxyFactory) -> RunningProxy:
    """A proxy that holds no token, in front of a GitLab where each client sees its own part."""
    gitlab.add_project(43, "platform/secret", group_id=7)
    gitlab.tokens.update({ALICE: {42, 43}, BOB: set(), CAROL: {42}})
    return await make_proxy(upstream={"credentials": "passthrough", "token": ""})


async def test_no_credentials_get_gitlabs_challenge_without_asking_gitlab(
    gitlab: FakeGitLab, passthrough: RunningProxy
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    status, headers, _ = await get_authorized(passthrough.url + PAGE)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="GitLab Packages Registry"'
    assert gitlab.requests == []


async def test_pip_installs_with_its_own_credentials_and_the_proxy_sends_only_those(
    gitlab: FakeGitLab, passthrough: RunningProxy, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.add_wheel(42, "corp-app", "2.0.0", requires=["corp-util"])
    index = passthrough.index_url("projects/42").replace("http://", f"http://someone:{ALICE}@")
    (await pip_install(index, tmp_path / "one", "corp-app")).check()
    assert {r.headers.get("Authorization") for r in gitlab.requests} == {basic(ALICE)}
    files = gitlab.counts["file"]
    (await pip_install(index, tmp_path / "two", "corp-app")).check()
    assert gitlab.counts["file"] == files, "allowed client's second install fetched files again"


async def test_refused_client_never_gets_a_cached_byte_and_gets_gitlabs_status(
    gitlab: FakeGitLab, passthrough: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0", payload_size=5000)
    url = scope_file_url(passthrough, "projects/42/packages/pypi", wheel.sha256, wheel.filename)
    status, headers, _ = await get_authorized(passthrough.url + PAGE, ALICE)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert headers["Cache-Control"].startswith("private")
    status, headers, body = await get_authorized(url, ALICE)
    assert (status, hashlib.sha256(body).hexdigest()) == (200, wheel.sha256)
    assert headers["Cache-Control"].startswith("private")
    # Alice again: both from the cache, with no new question to GitLab within auth_ttl.
    before = len(gitlab.requests)
    assert (await get_authorized(passthrough.url + PAGE, ALICE))[1]["X-Cache"] == "HIT"
    assert (await get_authorized(url, ALICE))[1]["X-Cache"] == "HIT"
    assert len(gitlab.requests) == before

    with caplog.at_level(logging.DEBUG):
        for secret, expected in [(BOB, 404), ("glpat-unknown-to-gitlab", 401), (BOB, 404)]:
            for target in (
                passthrough.url + PAGE,
                url,
                passthrough.url + PAGE[: -len("corp-util/")],
            ):
                status, headers, body = await get_authorized(target, secret)
                assert status == expected, (target, secret)
                assert wheel.filename.encode() not in body
                assert wheel.content[:64] not in body
                if expected == 401:
                    assert "Basic" in headers["WWW-Authenticate"]
    # Each refusal came from GitLab itself, and is then remembered for auth_ttl.
    bob = basic(BOB)
    asked = [r for r in gitlab.requests[before:] if r.headers.get("Authorization") == bob]
    assert asked and all(r.status == 404 for r in asked)
    assert len(asked) == 3, "Bob's second round should have been answered from the decision cache"
    for secret in (BOB, "glpat-unknown-to-gitlab", ALICE):
        assert secret not in caplog.text


async def test_group_pages_are_per_client_and_files_follow_what_gitlab_lets_each_see(
    gitlab: FakeGitLab, passthrough: RunningProxy
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    hidden = gitlab.add_wheel(43, "secret-sauce", "1.0.0")
    # Alice sees the secret project through the group, and its file lands in the cache.
    _, _, index = await get_authorized(f"{passthrough.url}{GROUP}/simple/", ALICE)
    assert b"secret-sauce" in index
    status, _, _ = await get_authorized(f"{passthrough.url}{GROUP}/simple/secret-sauce/", ALICE)
    assert status == 200
    group_file = scope_file_url(
        passthrough, "groups/7/-/packages/pypi", hidden.sha256, hidden.filename
    )
    status, _, body = await get_authorized(group_file, ALICE)
    assert (status, body) == (200, hidden.content)

    # Carol shares the group but not that project: her own index, and no hidden file for her.
    status, headers, index = await get_authorized(f"{passthrough.url}{GROUP}/simple/", CAROL)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert b"corp-util" in index
    assert b"secret-sauce" not in index
    status, _, body = await get_authorized(f"{passthrough.url}{GROUP}/simple/secret-sauce/", CAROL)
    assert status != 200
    assert hidden.filename.encode() not in body
    status, _, body = await get_authorized(group_file, CAROL)
    assert status == 404
    assert hidden.content[:64] not in body
    # Nor through the project she can read, where the file is not.
    in_42 = scope_file_url(passthrough, "projects/42/packages/pypi", hidden.sha256, hidden.filename)
    status, _, body = await get_authorized(in_42, CAROL)
    assert status == 404
    assert hidden.content[:64] not in body


async def test_revoked_token_stops_working_within_auth_ttl(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.tokens[ALICE] = {42}
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy(upstream={"credentials": "passthrough", "token": "", "auth_ttl": 0.5})
    url = scope_file_url(proxy, "projects/42/packages/pypi", wheel.sha256, wheel.filename)
    assert (await get_authorized(proxy.url + PAGE, ALICE))[0] == 200
    assert (await get_authorized(url, ALICE))[0] == 200
    gitlab.revoke(ALICE)
    await asyncio.sleep(0.6)
    for target in (proxy.url + PAGE, url):
        status, headers, body = await get_authorized(target, ALICE)
        assert status == 401
        assert "WWW-Authenticate" in headers
        assert wheel.content[:64] not in body


async def test_prefer_client_uses_the_clients_credentials_when_given(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.tokens[CAROL] = {42}
    gitlab.tokens[BOB] = set()
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy(upstream={"credentials": "prefer-client"})
    status, headers, _ = await get_authorized(proxy.url + PAGE)
    assert status == 200
    assert gitlab.requests[-1].headers["Authorization"] == basic(TOKEN, "proxy")
    # Judged per credential like any client's (the cache holds what clients' tokens fetched).
    assert headers["Cache-Control"].startswith("private")
    status, headers, _ = await get_authorized(proxy.url + PAGE, CAROL)
    assert status == 200
    assert gitlab.requests[-1].headers["Authorization"] == basic(CAROL)
    assert headers["Cache-Control"].startswith("private")
    # A client GitLab refuses gets GitLab's answer, not the proxy's cached copy.
    status, _, body = await get_authorized(proxy.url + PAGE, BOB)
    assert status == 404
    assert b"corp-util" not in body


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("Basic " + base64.b64encode(b"glpat-no-colon-secret").decode(), "no colon"),
        ("Basic " + base64.b64encode(b"someone:\xffglpat-\xfesecret").decode(), "UTF-8"),
        ("Basic glpat-not-base64-secret!!", "base64"),
        ("Basic " + base64.b64encode(b"someone:glpat-" + b"s" * 5000).decode(), "longer"),
        ("Negotiate glpat-negotiate-secret", "scheme"),
    ],
)
async def test_odd_credentials_are_a_clear_400_never_sent_nor_logged(
    gitlab: FakeGitLab,
    passthrough: RunningProxy,
    caplog: pytest.LogCaptureFixture,
    header: str,
    why: str,
) -> None:
    with caplog.at_level(logging.DEBUG):
        status, _, body = await get_authorized(
            passthrough.url + PAGE, headers={"Authorization": header}
        )
    assert status == 400
    assert why in body.decode()
    assert gitlab.requests == []
    for leaked in ("glpat-", "secret", header.partition(" ")[2]):
        assert leaked not in caplog.text
        assert leaked.encode() not in body


async def test_cached_file_for_a_new_client_is_checked_with_gitlab_first(
    gitlab: FakeGitLab, passthrough: RunningProxy
) -> None:
    gitlab.object_storage = True
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    url = scope_file_url(passthrough, "projects/42/packages/pypi", wheel.sha256, wheel.filename)
    status, headers, body = await get_authorized(url, ALICE)
    assert (status, headers["X-Cache"], body) == (200, "MISS", wheel.content)
    objects = gitlab.counts["object"]
    # Carol never asked for a page: GitLab is asked about her and this file (a HEAD, answered
    # with the object-storage redirect, which is not followed), then the cache serves her.
    before = len(gitlab.requests)
    status, headers, body = await get_authorized(url, CAROL)
    assert (status, headers["X-Cache"], body) == (200, "HIT", wheel.content)
    asked = gitlab.requests[before:]
    assert [(r.method, r.status) for r in asked] == [("HEAD", 302)]
    assert asked[0].headers["Authorization"] == basic(CAROL)
    assert gitlab.counts["object"] == objects
    # Bob is asked about the same way, and refused.
    status, _, body = await get_authorized(url, BOB)
    assert status == 404
    assert wheel.content[:64] not in body


async def test_an_anonymous_refusal_in_prefer_client_does_not_block_other_clients(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    """GitLab refusing the proxy's own token is no outage: it must not hold the page for all."""
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.tokens["glpat-alice"] = None
    proxy = await make_proxy(
        upstream={"credentials": "prefer-client", "token": "glpat-unknown-to-gitlab"}
    )
    page = f"{proxy.url}{PROJECT}/simple/corp-util/"
    status, _, body = await fetch_as_written(page)
    assert status == 502
    assert b"proxy's credentials" in body
    status, _, body = await fetch_as_written(page, {"Authorization": basic("glpat-alice")})
    assert status == 200, body


async def test_prefer_client_never_serves_anonymous_callers_what_only_a_client_could_read(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    """Without credentials a caller acts as the proxy's token, which cannot read project 43."""
    gitlab.add_project(43, "platform/secret", group_id=7)
    hidden = gitlab.add_wheel(43, "secret-pkg", "1.0.0")
    gitlab.tokens.update({"glpat-limited-proxy": {42}, "glpat-alice": {42, 43}})
    proxy = await make_proxy(
        upstream={"credentials": "prefer-client", "token": "glpat-limited-proxy"}
    )
    api = f"{proxy.url}/api/v4/projects/43/packages/pypi"
    page = f"{api}/simple/secret-pkg/"
    url = f"{api}/files/{hidden.sha256}/{hidden.filename}"
    alice = {"Authorization": basic("glpat-alice")}
    for target in (page, url, url + ".metadata"):
        assert (await fetch_as_written(target, alice))[0] == 200
    for target in (page, url, url + ".metadata"):
        status, _, body = await fetch_as_written(target)
        assert status == 404, target
        assert b"secret-pkg" not in body and hidden.content[:32] not in body


async def test_offline_passthrough_asks_gitlab_nothing_about_cached_files(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    gitlab.tokens["glpat-alice"] = {42}
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    upstream = {"credentials": "passthrough", "token": ""}
    online = await make_proxy(cache_dir=tmp_path / "c", upstream=upstream)
    url = f"{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    alice = {"Authorization": basic("glpat-alice")}
    assert (await fetch_as_written(online.url + url, alice))[0] == 200
    await online.stop()
    offline = await make_proxy(cache_dir=tmp_path / "c", upstream=upstream, cache={"offline": True})
    before = len(gitlab.requests)
    for target in (url, url + ".metadata"):
        status, _, body = await fetch_as_written(offline.url + target, alice)
        assert status == 404, (body, gitlab.requests[before:])
        assert wheel.content[:32] not in body
    assert gitlab.requests[before:] == []


async def test_a_new_passthrough_client_is_checked_with_a_head_gitlab_answers_200(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    """GitLab without object storage answers the HEAD with 200 and the file's headers."""
    gitlab.tokens.update({"glpat-alice": {42}, "glpat-carol": {42}, "glpat-bob": set()})
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy(upstream={"credentials": "passthrough", "token": ""})
    url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    assert (await fetch_as_written(url, {"Authorization": basic("glpat-alice")}))[0] == 200
    status, headers, body = await fetch_as_written(url, {"Authorization": basic("glpat-carol")})
    assert (status, headers.get("X-Cache"), body) == (200, "HIT", wheel.content)
    status, _, body = await fetch_as_written(url, {"Authorization": basic("glpat-bob")})
    assert status == 404
    assert wheel.content[:32] not in body
