"""Issue 18 part 4: an office proxy whose upstream is a regional proxy of this project, in front
of GitLab: installs, files fetched once, `.metadata`, JSON, upload times, stale-if-error, and
whose credentials reach GitLab in each mode README's "Tiers" section documents."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yarl

from proxy import keys
from proxy.access import hash_token
from tests.support.clients import installed, publish_app_with_dependency
from tests.support.fake_gitlab import FakeGitLab, FakePublicIndex, RequestRecord
from tests.support.harness import (
    TOKEN,
    RunningProxy,
    make_settings,
    pip_install,
    start_proxy,
    twine,
    uv_pip_install,
)
from tests.support.http import Answer, fetch, host_of, page, project_file_url
from tests.support.pep691 import check_project_page
from tests.support.polling import eventually
from tests.support.wheels import make_wheel, wheel_metadata

# An office's own GitLab token, when the regional passes it on.
OFFICE_GITLAB = "glpat-office-token-5566778899"
# A client's own GitLab token, for the modes that pass clients' credentials on.
CLIENT = "glpat-client-token-0987654321"
# The office's token when the regional guards itself with `[access] tokens_file`: a regional
# access token, which must never reach GitLab.
OFFICE_ACCESS = "office-access-token-1122334455"


@dataclass
class Tiers:
    regional: RunningProxy
    office: RunningProxy

    def index(self, credentials: str | None = None) -> str:
        url = self.office.index_url("projects/42")
        if credentials is None:
            return url
        return url.replace("http://", f"http://__token__:{credentials}@", 1)


TiersFactory = Callable[..., Awaitable[Tiers]]


@pytest.fixture
async def tiers(tmp_path: Path, gitlab: FakeGitLab) -> AsyncIterator[TiersFactory]:
    """Start a regional proxy in front of `gitlab` and an office proxy in front of it, as README's
    recipe has them; keyword `regional` and `office` hold each one's setting sections on top,
    `office_token` the office's token."""
    started: list[RunningProxy] = []

    async def factory(
        regional: dict[str, dict[str, Any]] | None = None,
        office: dict[str, dict[str, Any]] | None = None,
        office_token: str = TOKEN,
    ) -> Tiers:
        regional_settings = make_settings(
            gitlab.url, tmp_path / "regional", TOKEN, **(regional or {})
        )
        started.append(regional_proxy := await start_proxy(regional_settings))
        office_settings = make_settings(
            regional_proxy.url, tmp_path / "office", office_token, **(office or {})
        )
        started.append(office_proxy := await start_proxy(office_settings))
        return Tiers(regional_proxy, office_proxy)

    try:
        yield factory
    finally:
        for proxy in reversed(started):
            await proxy.stop()


def secrets_in(record: RequestRecord) -> set[str]:
    """Every secret a request carried: Basic passwords, Bearer and GitLab's token headers."""
    found = set()
    scheme, _, value = record.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            found.add(base64.b64decode(value).decode().partition(":")[2])
        except (binascii.Error, UnicodeDecodeError):
            found.add(value)
    elif value:
        found.add(value)
    found.update(record.headers.getall("Private-Token", []))
    found.update(record.headers.getall("Deploy-Token", []))
    return found


def whole_downloads(gitlab: FakeGitLab, filename: str) -> int:
    """GitLab's answers of the whole file (GET without Range)."""
    return sum(
        1
        for r in gitlab.requests
        if r.kind == "file"
        and r.method == "GET"
        and r.path.endswith("/" + filename)
        and "Range" not in r.headers
    )


async def test_pip_and_uv_install_through_the_office_and_gitlab_sends_each_file_once(
    gitlab: FakeGitLab, tiers: TiersFactory, tmp_path: Path
) -> None:
    publish_app_with_dependency(gitlab)
    chain = await tiers()
    (await pip_install(chain.index(), tmp_path / "pip", "corp-app")).check()
    assert installed(tmp_path / "pip") == {"corp_app-2.0.0.dist-info", "corp_util-1.1.0.dist-info"}
    result = await uv_pip_install(
        chain.index(), tmp_path / "uv", "corp-app", cache_dir=tmp_path / "c"
    )
    result.check()
    assert installed(tmp_path / "uv") == installed(tmp_path / "pip")
    # Each file once from GitLab (small wheels come whole with the tail the regional reads for
    # their metadata), however many clients and tiers asked.
    for filename in ("corp_app-2.0.0-py3-none-any.whl", "corp_util-1.1.0-py3-none-any.whl"):
        asked = [r for r in gitlab.requests if r.kind == "file" and r.path.endswith("/" + filename)]
        assert len(asked) == 1, filename
    # Both proxies hold the files now: the office answers alone.
    gitlab_requests, office_known = len(gitlab.requests), set(chain.office.app[keys.FILES].known)
    assert set(chain.regional.app[keys.FILES].known) >= office_known
    result = await uv_pip_install(
        chain.index(), tmp_path / "uv2", "corp-app", cache_dir=tmp_path / "d"
    )
    result.check()
    assert [r.kind for r in gitlab.requests[gitlab_requests:] if r.kind == "file"] == []


async def test_metadata_reaches_the_office_from_the_regional_without_a_whole_wheel_download(
    gitlab: FakeGitLab, tiers: TiersFactory
) -> None:
    wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", requires=["six>=1"], payload_size=1_000_000)
    chain = await tiers()
    listing = (await page(chain.office, "corp-big")).json()
    # Neither proxy has read it yet: offered, without a hash.
    assert listing["files"][0]["core-metadata"] is True
    got = await fetch(project_file_url(chain.office, wheel.sha256, wheel.filename) + ".metadata")
    assert (got.status, got.body) == (200, wheel_metadata(wheel.content))
    # The office asked the regional's .metadata route (a Range into the regional's files route
    # would have made it download the whole wheel); the regional read GitLab's by Range.
    assert whole_downloads(gitlab, wheel.filename) == 0
    assert all("Range" in r.headers for r in gitlab.requests if r.kind == "file")
    assert gitlab.file_bytes_sent < len(wheel.content) // 10
    for proxy in (chain.regional, chain.office):
        assert wheel.sha256 not in proxy.app[keys.FILES].known
    metadata_sha256 = hashlib.sha256(got.body).hexdigest()
    listing = (await page(chain.office, "corp-big")).json()
    assert listing["files"][0]["core-metadata"] == {"sha256": metadata_sha256}
    # A second client is answered by the office alone.
    asked = len(gitlab.requests)
    again = await fetch(project_file_url(chain.office, wheel.sha256, wheel.filename) + ".metadata")
    assert (again.status, again.body, len(gitlab.requests)) == (200, got.body, asked)


async def test_office_json_carries_the_regionals_sizes_upload_times_and_metadata_hashes(
    gitlab: FakeGitLab, public: FakePublicIndex, tiers: TiersFactory, tmp_path: Path
) -> None:
    private = gitlab.add_wheel(42, "corp-util", "1.0.0")
    public.add_wheel("tiny-json", "1.0.0", upload_time="2024-01-01T00:00:00.000000Z")
    newest = public.add_wheel("tiny-json", "1.1.0", upload_time="2024-06-01T12:00:00.250000Z")
    public.add_wheel("tiny-json", "1.2.0", upload_time="2025-01-01T00:00:00.000000Z")
    forwarding = {"forwarding": "cache", "forward_hosts": (host_of(public),)}
    chain = await tiers(regional={"upstream": forwarding})
    # The regional caches the GitLab wheel, and reads its metadata.
    assert (
        await fetch(project_file_url(chain.regional, private.sha256, private.filename))
    ).status == 200
    metadata_sha256 = hashlib.sha256(wheel_metadata(private.content)).hexdigest()

    async def regional_knows() -> bool:
        entry = (await page(chain.regional, "corp-util")).json()["files"][0]
        return bool(entry["core-metadata"] == {"sha256": metadata_sha256})

    await eventually(regional_knows, "the regional page names the metadata hash")
    office_page = (await page(chain.office, "corp-util")).json()
    check_project_page(office_page)
    (entry,) = office_page["files"]
    assert office_page["meta"]["api-version"] == "1.1"
    assert entry["size"] == len(private.content)
    assert entry["core-metadata"] == {"sha256": metadata_sha256}
    assert entry["url"] == f"../../files/{private.sha256}/{private.filename}"

    public_page = (await page(chain.office, "tiny-json")).json()
    check_project_page(public_page)
    assert public_page["meta"]["api-version"] == "1.1"
    files = {f["filename"]: f for f in public_page["files"]}
    assert files[newest.filename]["upload-time"] == "2024-06-01T12:00:00.250000Z"
    assert files[newest.filename]["size"] == len(newest.content)
    public_metadata = hashlib.sha256(wheel_metadata(newest.content)).hexdigest()
    assert files[newest.filename]["core-metadata"] == {"sha256": public_metadata}
    # uv's --exclude-newer reads those times at the office.
    result = await uv_pip_install(
        chain.index(),
        tmp_path / "uv",
        "tiny-json",
        cache_dir=tmp_path / "c",
        extra=("--exclude-newer", "2024-09-01T00:00:00Z"),
    )
    result.check()
    assert installed(tmp_path / "uv") == {"tiny_json-1.1.0.dist-info"}
    # The public wheel came to the office through the regional, never from the public index.
    public_files = [r.path for r in public.requests if r.kind == "file"]
    assert [p for p in public_files if p.endswith(".whl")] == [
        f"/packages/{newest.sha256[:2]}/{newest.sha256[2:4]}/{newest.sha256}/{newest.filename}"
    ]
    assert newest.sha256 in chain.regional.app[keys.FILES].known
    assert not any(secrets_in(r) for r in public.requests)


async def test_stale_if_error_at_each_tier(
    gitlab: FakeGitLab, tiers: TiersFactory, tmp_path: Path
) -> None:
    publish_app_with_dependency(gitlab)
    # Every page request goes upstream: what each tier answers then is its upstream's doing.
    always = {"cache": {"index_ttl": 0.0}, "upstream": {"retry_interval": 0.0}}
    chain = await tiers(regional=always, office=always)
    (await pip_install(chain.index(), tmp_path / "one", "corp-app")).check()
    first = (await page(chain.office, "corp-app")).json()

    # GitLab down: the regional serves its stored copy, and the office gets it.
    gitlab.down = True
    assert (await page(chain.regional, "corp-app")).headers["X-Cache"] == "STALE"
    answer = await page(chain.office, "corp-app")
    assert answer.status == 200
    assert answer.json()["files"] == first["files"]
    (await pip_install(chain.index(), tmp_path / "two", "corp-app")).check()

    # The regional down too: the office serves its own stored copy, and its cached files.
    await chain.regional.stop()
    answer = await page(chain.office, "corp-app")
    assert (answer.status, answer.headers["X-Cache"]) == (200, "STALE")
    assert answer.json()["files"] == first["files"]
    (await pip_install(chain.index(), tmp_path / "three", "corp-app")).check()
    assert installed(tmp_path / "three") == installed(tmp_path / "one")


@dataclass(frozen=True)
class Mode:
    """One credentials model of README's "Tiers" section."""

    regional: dict[str, dict[str, Any]]
    office: dict[str, dict[str, Any]]
    office_token: str
    # The client's own token, sent to the office; None: the client sends none.
    client: str | None
    # The one secret GitLab sees on every request, and the ones that must reach no upstream.
    gitlab_sees: str
    never_sent: tuple[str, ...]


# As README's table has them: each regional in passthrough holds a read_api token of its own,
# for the Packages API only.
PASSING_ON = {"upstream": {"credentials": "passthrough"}}
MODES = {
    # The office injects its GitLab token; the regional passes it on as a client's.
    "office-injects": Mode(
        regional=PASSING_ON,
        office={},
        office_token=OFFICE_GITLAB,
        client=None,
        gitlab_sees=OFFICE_GITLAB,
        never_sent=(TOKEN,),
    ),
    # Each client's own GitLab token goes through both proxies to GitLab.
    "clients-through": Mode(
        regional=PASSING_ON,
        office={"upstream": {"credentials": "passthrough"}},
        office_token="",
        client=CLIENT,
        gitlab_sees=CLIENT,
        never_sent=(TOKEN,),
    ),
    # The regional holds the GitLab token and guards itself with access tokens; the office's
    # token is one of those, and stays at the regional.
    "regional-injects": Mode(
        regional={},
        office={},
        office_token=OFFICE_ACCESS,
        client=None,
        gitlab_sees=TOKEN,
        never_sent=(OFFICE_ACCESS,),
    ),
}


def carries(record: RequestRecord, secret: str) -> bool:
    """Whether any header of a request holds `secret`, as it is or in Basic's base64."""
    encoded = [
        base64.b64encode(f"{user}:{secret}".encode()).decode() for user in ("proxy", "__token__")
    ]
    return (
        any(
            secret in value or any(e in value for e in encoded) for value in record.headers.values()
        )
        or secret in record.path
    )


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
async def test_each_credentials_mode_sends_gitlab_the_right_token_and_no_other(
    gitlab: FakeGitLab,
    public: FakePublicIndex,
    tiers: TiersFactory,
    tmp_path: Path,
    mode: Mode,
) -> None:
    gitlab.add_wheel(42, "corp-app", "1.0.0", requires=["tiny-json>=1"])
    public.add_wheel("tiny-json", "1.0.0")
    gitlab.tokens[CLIENT] = {42}
    gitlab.tokens[OFFICE_GITLAB] = {42}
    forwarding = {"forwarding": "cache", "forward_hosts": (host_of(public),)}
    regional = {**mode.regional, "upstream": {**mode.regional.get("upstream", {}), **forwarding}}
    if mode.office_token == OFFICE_ACCESS:
        tokens = tmp_path / "tokens"
        tokens.write_text(hash_token(OFFICE_ACCESS) + "\n")
        regional["access"] = {"tokens_file": str(tokens)}
    chain = await tiers(regional=regional, office=mode.office, office_token=mode.office_token)

    (await pip_install(chain.index(mode.client), tmp_path / "pip", "corp-app")).check()
    assert installed(tmp_path / "pip") == {"corp_app-1.0.0.dist-info", "tiny_json-1.0.0.dist-info"}
    assert gitlab.requests
    # GitLab saw the one token it should, on every request; the public index saw none.
    assert [secrets_in(r) for r in gitlab.requests] == [{mode.gitlab_sees}] * len(gitlab.requests)
    assert public.requests
    assert not any(secrets_in(r) for r in public.requests)
    for secret in mode.never_sent:
        assert not any(carries(r, secret) for r in gitlab.requests + public.requests), secret
    # The Packages API, asked by the regional only, with its own token only.
    assert gitlab.api_requests
    assert all(secrets_in(r) == {TOKEN} for r in gitlab.api_requests)
    if mode.client is not None:
        # Without credentials, GitLab's challenge comes back through both tiers.
        answer = await page(chain.office, "corp-app")
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic")


async def test_an_upload_through_the_office_reaches_gitlab_and_both_tiers_see_it_at_once(
    gitlab: FakeGitLab, tiers: TiersFactory, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.tokens[CLIENT] = {42}
    mode = MODES["clients-through"]
    chain = await tiers(regional=mode.regional, office=mode.office, office_token="")
    (await pip_install(chain.index(CLIENT), tmp_path / "one", "corp-util")).check()
    assert installed(tmp_path / "one") == {"corp_util-1.0.0.dist-info"}

    filename, content = make_wheel("corp-util", "1.1.0")
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / filename).write_bytes(content)
    upload_url = chain.office.url + "/api/v4/projects/42/packages/pypi"
    (await twine(upload_url, CLIENT, tmp_path / "dist" / filename)).check()
    posts = [r for r in gitlab.requests if r.method == "POST"]
    assert [(r.status, secrets_in(r)) for r in posts] == [(201, {CLIENT})]
    # Each tier dropped its pages of the name: the new version installs at once.
    (await pip_install(chain.index(CLIENT), tmp_path / "two", "corp-util")).check()
    assert installed(tmp_path / "two") == {"corp_util-1.1.0.dist-info"}


async def test_the_office_policy_knows_the_regionals_public_files_from_its_own(
    gitlab: FakeGitLab, public: FakePublicIndex, tiers: TiersFactory, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    old = public.add_wheel("tiny-json", "1.0.0", upload_time="2024-01-01T00:00:00.000000Z")
    young = public.add_wheel("tiny-json", "1.1.0")
    public.add_wheel("acme-lib", "1.0.0", upload_time="2024-01-01T00:00:00.000000Z")
    forwarding = {"forwarding": "cache", "forward_hosts": (host_of(public),)}
    # The office's own rules: public files a week old at least, GitLab's at once, no acme-*.
    policy = {"min_age": 7 * 86400.0, "protected": ("acme-*",)}
    chain = await tiers(regional={"upstream": forwarding}, office={"policy": policy})

    listing = (await page(chain.office, "tiny-json")).json()
    assert [f["filename"] for f in listing["files"]] == [old.filename]
    refused = await fetch(project_file_url(chain.office, young.sha256, young.filename))
    assert refused.status == 403
    assert (await page(chain.office, "corp-util")).status == 200
    protected = await page(chain.office, "acme-lib")
    assert protected.status == 404, protected.body
    assert "protected" in protected.json()["message"]
    (await pip_install(chain.index(), tmp_path / "pip", "tiny-json", "corp-util")).check()
    assert installed(tmp_path / "pip") == {"tiny_json-1.0.0.dist-info", "corp_util-1.0.0.dist-info"}


async def test_the_office_refuses_a_protected_names_public_file_asked_for_by_its_hash(
    gitlab: FakeGitLab, public: FakePublicIndex, tiers: TiersFactory
) -> None:
    """A lock file made without the office knows the public file's URL: the office must refuse
    it as its page, though the regional's link to it is on the regional's own origin."""
    squatter = public.add_wheel("acme-lib", "1.0.0", upload_time="2024-01-01T00:00:00.000000Z")
    forwarding = {"forwarding": "cache", "forward_hosts": (host_of(public),)}
    chain = await tiers(
        regional={"upstream": forwarding}, office={"policy": {"protected": ("acme-*",)}}
    )
    assert (await page(chain.office, "acme-lib")).status == 404
    refused = await fetch(project_file_url(chain.office, squatter.sha256, squatter.filename))
    assert refused.status == 403, refused.body
    assert refused.json()["rule"] == "protected"


def filenames(answer: Answer) -> set[str]:
    return {f["filename"] for f in answer.json()["files"]}


async def test_a_regionals_stale_page_is_stale_at_the_office_which_asks_again_soon(
    gitlab: FakeGitLab, tiers: TiersFactory
) -> None:
    retry = 0.3
    old = gitlab.add_wheel(42, "corp-util", "1.0.0")
    chain = await tiers(
        regional={"cache": {"index_ttl": 0.0}, "upstream": {"retry_interval": 0.0}},
        office={"cache": {"index_ttl": 3600.0}, "upstream": {"retry_interval": retry}},
    )
    # The regional holds a last good copy; the office has none yet.
    assert (await page(chain.regional, "corp-util")).headers["X-Cache"] == "MISS"

    gitlab.down = True
    regional = await page(chain.regional, "corp-util")
    assert regional.headers["X-Cache"] == "STALE"
    assert regional.headers["Warning"].startswith("110 ")
    assert int(regional.headers["Age"]) >= 0
    # The office says so too, every time: the copy is not fresh for its index_ttl.
    for _ in range(2):
        answer = await page(chain.office, "corp-util")
        assert answer.status == 200
        assert answer.headers["X-Cache"] == "STALE"
        assert answer.headers["Warning"].startswith("110 ")
        assert "max-age=0" in answer.headers["Cache-Control"]
        assert filenames(answer) == {old.filename}

    # GitLab back with a new upload: the office shows it after retry_interval, not index_ttl.
    gitlab.down = False
    new = gitlab.add_wheel(42, "corp-util", "1.1.0")
    back = time.monotonic()

    async def office_shows_the_upload() -> bool:
        return new.filename in filenames(await page(chain.office, "corp-util"))

    await eventually(office_shows_the_upload, "the office shows the new upload", timeout=10)
    assert time.monotonic() - back < 3 * retry + 2
    assert (await page(chain.office, "corp-util")).headers["X-Cache"] == "HIT"


async def test_the_office_keeps_its_newer_copy_over_an_older_stale_one_from_upstream(
    gitlab: FakeGitLab, tiers: TiersFactory, tmp_path: Path
) -> None:
    old = gitlab.add_wheel(42, "corp-util", "1.0.0")
    always = {"cache": {"index_ttl": 0.0}, "upstream": {"retry_interval": 0.0}}
    chain = await tiers(regional=always, office=always)
    # A regional cache as it was before the next upload: a backup, or a replica behind.
    backup = make_settings(gitlab.url, tmp_path / "backup", TOKEN, **always)
    before = await start_proxy(backup)
    assert (await page(before, "corp-util")).headers["X-Cache"] == "MISS"
    await before.stop()
    new = gitlab.add_wheel(42, "corp-util", "1.1.0")
    assert filenames(await page(chain.office, "corp-util")) == {old.filename, new.filename}

    # The regional is replaced, in place, by one on the older cache; then GitLab goes down.
    port = yarl.URL(chain.regional.url).port
    assert port is not None
    await chain.regional.stop()
    restored = await start_proxy(backup, port=port)
    try:
        gitlab.down = True
        stale = await page(restored, "corp-util")
        assert (stale.headers["X-Cache"], filenames(stale)) == ("STALE", {old.filename})
        for _ in range(2):
            answer = await page(chain.office, "corp-util")
            assert answer.headers["X-Cache"] == "STALE"
            assert filenames(answer) == {old.filename, new.filename}
    finally:
        await restored.stop()
    # What the office stored is still its own newer copy: the regional gone, it serves that.
    answer = await page(chain.office, "corp-util")
    assert answer.headers["X-Cache"] == "STALE"
    assert filenames(answer) == {old.filename, new.filename}


async def test_the_office_never_asks_the_regional_for_gitlabs_packages_api(
    gitlab: FakeGitLab, tiers: TiersFactory
) -> None:
    """A regional holding a deploy token knows no upload times; the office, whose upstream
    answers JSON (so is not GitLab's registry), must not ask it for GitLab's REST API."""
    gitlab.deploy_tokens.add("gldt-regional-deploy-token")
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    chain = await tiers(
        regional={"upstream": {"token": "gldt-regional-deploy-token", "username": "deploy"}}
    )
    entry = (await page(chain.office, "corp-util")).json()["files"][0]
    assert "upload-time" not in entry
    assert chain.regional.app[keys.PAGES].times.problem is not None  # the regional says why
    assert chain.office.app[keys.METRICS].latency_counts.get("api") is None
    assert chain.office.app[keys.PAGES].times.problem is None


def uploaded(gitlab: FakeGitLab, version: str, when: str) -> tuple[str, int]:
    wheel = gitlab.add_wheel(42, "corp-util", version)
    wheel.uploaded_at = datetime.fromisoformat(when).timestamp()
    return wheel.filename, len(wheel.content)


@pytest.mark.parametrize("regional_token_only_for_times", [False, True])
async def test_gitlab_upload_times_reach_the_office_from_the_regionals_pages(
    gitlab: FakeGitLab, tiers: TiersFactory, tmp_path: Path, regional_token_only_for_times: bool
) -> None:
    old = uploaded(gitlab, "1.0.0", "2026-01-15T08:30:00.125+00:00")
    new = uploaded(gitlab, "2.0.0", "2026-11-30T10:00:00+00:00")
    regional: dict[str, dict[str, Any]] = {}
    office_token = TOKEN
    if regional_token_only_for_times:
        # The regional passes the office's GitLab token on, and holds a read_api token of its
        # own for the Packages API only.
        gitlab.tokens[OFFICE_GITLAB] = None
        regional = {"upstream": {"credentials": "passthrough"}}
        office_token = OFFICE_GITLAB
    chain = await tiers(regional=regional, office_token=office_token)

    listing = (await page(chain.office, "corp-util")).json()
    check_project_page(listing)
    assert listing["meta"]["api-version"] == "1.1"
    got = {f["filename"]: (f["upload-time"], f["size"]) for f in listing["files"]}
    assert got == {
        old[0]: ("2026-01-15T08:30:00.125000Z", old[1]),
        new[0]: ("2026-11-30T10:00:00.000000Z", new[1]),
    }
    result = await uv_pip_install(
        chain.index(),
        tmp_path / "uv",
        "corp-util",
        cache_dir=tmp_path / "c",
        extra=("--exclude-newer", "2026-06-01T00:00:00Z"),
    )
    result.check()
    assert installed(tmp_path / "uv") == {"corp_util-1.0.0.dist-info"}
    # The regional asked GitLab's Packages API with its own token as Private-Token; GitLab's
    # registry routes saw the office's; the office asked nothing it lacks.
    assert gitlab.api_requests
    assert all(r.headers.get("Private-Token") == TOKEN for r in gitlab.api_requests)
    assert all(secrets_in(r) == {office_token} for r in gitlab.requests)
    assert chain.office.app[keys.PAGES].times.problem is None
    assert chain.regional.app[keys.PAGES].times.problem is None


async def test_an_office_leaves_upload_times_to_the_regional_which_says_why_it_has_none(
    gitlab: FakeGitLab, tiers: TiersFactory
) -> None:
    uploaded(gitlab, "1.0.0", "2026-01-15T08:30:00+00:00")
    # A regional without a token of its own cannot ask the Packages API.
    chain = await tiers(regional={"upstream": {"credentials": "passthrough", "token": ""}})
    listing = (await page(chain.office, "corp-util")).json()
    assert "upload-time" not in listing["files"][0]
    assert not gitlab.api_requests
    assert chain.office.app[keys.PAGES].times.problem is None
    problem = chain.regional.app[keys.PAGES].times.problem
    assert problem is not None and "upstream.token is not set" in problem
