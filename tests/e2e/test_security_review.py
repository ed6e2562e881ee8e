"""Security review of how the merged features meet: access, credentials, files, bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path
from unittest.mock import ANY

import pytest

from proxy import keys
from proxy.access import hash_token
from proxy.bundle import export_bundle, import_bundle
from proxy.scope import Scope
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import ProxyFactory, RunningProxy, make_settings
from tests.support.http import PROJECT, basic, fetch_as_written


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


@pytest.mark.parametrize("suffix", ["", ".metadata"])
@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("value", ["bytes=abc", "bytes=5-2", "bytes=0-1,3-4", "items=0-1"])
async def test_malformed_range_is_a_4xx_on_files_and_metadata(
    gitlab: FakeGitLab, proxy: RunningProxy, suffix: str, cached: bool, value: str
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    if cached:
        assert (await fetch_as_written(url))[0] == 200
    status, _, body = await fetch_as_written(url + suffix, {"Range": value})
    assert status == 416, body
    assert b"Range" in body
    # Nothing was lost: the file and its metadata are still whole for the next client.
    status, _, body = await fetch_as_written(url)
    assert (status, body) == (200, wheel.content)
    assert (await fetch_as_written(url + ".metadata"))[0] == 200


async def _cached_wheel(gitlab: FakeGitLab, proxy: RunningProxy) -> tuple[str, str]:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    status, _, body = await fetch_as_written(url)
    assert (status, body) == (200, wheel.content)
    return url, wheel.sha256


async def test_metadata_asked_under_another_name_does_not_poison_the_real_wheels(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """An imported (air-gapped) cache learns each wheel's metadata on its first request."""
    source = await make_proxy(cache_dir=tmp_path / "online")
    url, sha256 = await _cached_wheel(gitlab, source)
    assert (await fetch_as_written(f"{source.url}{PROJECT}/simple/corp-util/"))[0] == 200
    await source.stop()
    bundle = tmp_path / "bundle.tar"
    await export_bundle(source.settings, [Scope("projects", "42")], bundle)
    await import_bundle(make_settings(gitlab.url, tmp_path / "mirror", ""), bundle)
    mirror = await make_proxy(cache_dir=tmp_path / "mirror", cache={"offline": True})
    files = f"{mirror.url}{PROJECT}/files/{sha256}"
    assert (await fetch_as_written(f"{files}/other_pkg-9.9-py3-none-any.whl.metadata"))[0] == 404
    status, _, body = await fetch_as_written(url.replace(source.url, mirror.url) + ".metadata")
    assert status == 200, body
    assert b"Name: corp-util" in body


async def test_a_blob_another_worker_stored_is_not_adopted_under_another_name(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Two workers share the cache; the second never saw the first one's fill."""
    first = await make_proxy(cache_dir=tmp_path / "shared")
    second = await make_proxy(cache_dir=tmp_path / "shared")
    url, sha256 = await _cached_wheel(gitlab, first)
    other = "other_pkg-9.9-py3-none-any.whl"
    before = len(gitlab.requests)
    status, _, body = await fetch_as_written(f"{second.url}{PROJECT}/files/{sha256}/{other}")
    # GitLab has no such file: it is asked, and says so.
    assert status == 404
    assert [r.path.rsplit("/", 1)[-1] for r in gitlab.requests[before:]] == [other]
    status, _, _ = await fetch_as_written(f"{second.url}{PROJECT}/files/{sha256}/{other}.metadata")
    assert status == 404
    for proxy in (first, second):
        status, _, body = await fetch_as_written(url.replace(first.url, proxy.url) + ".metadata")
        assert (status, b"Name: corp-util" in body) == (200, True)


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


async def test_a_file_another_worker_cached_is_checked_against_this_scope(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Two workers share the cache; project 43 does not list the wheel project 42 has."""
    gitlab.add_project(43, "platform/other", group_id=7)
    first = await make_proxy(cache_dir=tmp_path / "shared")
    second = await make_proxy(cache_dir=tmp_path / "shared")
    url, _ = await _cached_wheel(gitlab, first)
    elsewhere = url.replace(first.url, second.url).replace("/projects/42/", "/projects/43/")
    before = len(gitlab.requests)
    for _ in range(2):
        status, _, body = await fetch_as_written(elsewhere)
        assert status == 404, body
    # GitLab was asked about project 43 (a HEAD), and nothing was taken for its file.
    asked = gitlab.requests[before:]
    assert asked and all("/projects/43/" in r.path for r in asked)


async def test_a_page_another_worker_fetched_is_fresh_here_too(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Two workers share the cache: within index_ttl GitLab is asked once per page."""
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    workers = [
        await make_proxy(cache_dir=tmp_path / "shared", cache={"index_ttl": 600}) for _ in "ab"
    ]
    for proxy in workers * 2:
        assert (await fetch_as_written(f"{proxy.url}{PROJECT}/simple/corp-util/"))[0] == 200
    assert gitlab.counts["page"] == 1


async def test_metadata_another_worker_read_is_not_fetched_again(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Pip reads the page, then metadata, then the wheel: one download from GitLab in all."""
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    first, second = [await make_proxy(cache_dir=tmp_path / "shared") for _ in "ab"]
    url = f"{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    for proxy in (first, second):
        assert (await fetch_as_written(f"{proxy.url}{PROJECT}/simple/corp-util/"))[0] == 200
    status, _, metadata = await fetch_as_written(first.url + url + ".metadata")
    assert status == 200
    await first.app[keys.METADATA].close()  # its record of the metadata is written
    assert await fetch_as_written(second.url + url + ".metadata") == (200, ANY, metadata)
    status, _, body = await fetch_as_written(second.url + url)
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    assert gitlab.counts["file"] == 1
