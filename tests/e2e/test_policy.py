"""The [policy] rules end to end: protected names, local yanks seen by pip and uv, the age rules
on the times the cache holds, `explain`, blocks in metrics and status, and bad settings."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.codec import decode_page, encode_page
from proxy.page_key import PageKey
from proxy.policy import iso
from proxy.simple import Project
from proxy.store import DB_NAME, Store
from tests.support.cli_process import write_config
from tests.support.clients import installed
from tests.support.fake_gitlab import FakeFile, FakeGitLab, FakePublicIndex
from tests.support.harness import TOKEN, ProxyFactory, clean_env, pip_install, run, uv_pip_install
from tests.support.http import JSON_V1, PROJECT_PAGE, fetch, get, host_of, page, url_of
from tests.support.metrics import scrape, value
from tests.support.polling import eventually

DAY = 86400


def forwarding(public: FakePublicIndex, mode: str) -> dict[str, object]:
    hosts = (host_of(public),) if mode == "cache" else ()
    return {"forwarding": mode, "forward_hosts": hosts}


@pytest.mark.parametrize("mode", ["redirect", "cache"])
async def test_a_protected_name_is_never_taken_from_the_public_index(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory, mode: str
) -> None:
    public.add_wheel("acme-tools", "9.9.9")
    public.add_wheel("tiny-json", "1.0.0")
    proxy = await make_proxy(
        upstream=forwarding(public, mode), policy={"protected": ("acme-*", "corp-util")}
    )
    answer = await page(proxy, "acme-tools")
    assert answer.status == 404
    assert "protected" in answer.json()["message"]
    assert "Location" not in answer.headers
    assert not public.counts["page"]
    # Other names are forwarded as the mode says.
    assert (await page(proxy, "tiny-json")).status == (302 if mode == "redirect" else 200)


async def test_a_protected_name_gitlab_hosts_is_served(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "acme-tools", "1.0.0")
    public.add_wheel("acme-tools", "9.9.9")
    proxy = await make_proxy(
        upstream=forwarding(public, "cache"), policy={"protected": ("acme-*",)}
    )
    result = await pip_install(proxy.index_url("projects/42"), tmp_path / "t", "acme-tools")
    result.check()
    assert installed(tmp_path / "t") == {"acme_tools-1.0.0.dist-info"}
    assert not public.counts["page"]


async def test_a_protected_name_on_a_firewall_page_is_refused(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    gitlab.firewall = True
    public.add_wheel("acme-tools", "9.9.9")
    proxy = await make_proxy(upstream={"forwarding": "redirect"}, policy={"protected": ("acme-*",)})
    answer = await page(proxy, "acme-tools")
    assert answer.status == 404
    assert "Dependency Firewall" in answer.json()["message"]
    result = await pip_install(proxy.index_url("projects/42"), tmp_path / "t", "acme-tools")
    assert result.returncode != 0
    assert not public.counts["file"]


async def test_files_and_stored_pages_forwarded_before_a_name_was_protected_are_refused(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    wheel = public.add_wheel("acme-tools", "9.9.9")
    cache = tmp_path / "cache"
    before = await make_proxy(cache, upstream=forwarding(public, "cache"))
    assert (await page(before, "acme-tools")).status == 200
    file_url = url_of(before.url, wheel)
    assert (await fetch(file_url)).status == 200

    after = await make_proxy(
        cache, upstream=forwarding(public, "cache"), policy={"protected": ("acme-*",)}
    )
    answer = await page(after, "acme-tools")
    assert answer.status == 404
    assert "cached page" in answer.json()["message"]
    refused = await fetch(url_of(after.url, wheel))
    assert refused.status == 403
    assert refused.headers["Content-Type"].startswith("application/json")
    assert refused.json()["rule"] == "protected"
    assert refused.json()["available_at"] is None

    _, samples = await scrape(after)
    assert value(samples, "gitlab_pypi_proxy_policy_blocks_total", rule="protected") == 2
    _, _, status_page = await get(f"{after.url}/-/status")
    assert wheel.filename in status_page.decode()


async def test_local_yanks_are_skipped_by_pip_and_uv_unless_pinned(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.add_wheel(42, "corp-util", "2.0.0")
    proxy = await make_proxy(policy={"yanked": ("corp-util==2.0.0: broken build, use 1.0",)})
    index = proxy.index_url("projects/42")

    html = await fetch(f"{proxy.url}{PROJECT_PAGE}corp-util/", Accept_Encoding="identity")
    assert 'data-yanked="broken build, use 1.0"' in html.body.decode()
    files = (await page(proxy, "corp-util")).json()["files"]
    assert [f["yanked"] for f in files] == [False, "broken build, use 1.0"]

    result = await pip_install(index, tmp_path / "pip", "corp-util")
    result.check()
    assert installed(tmp_path / "pip") == {"corp_util-1.0.0.dist-info"}
    pinned = await pip_install(index, tmp_path / "pinned", "corp-util==2.0.0")
    pinned.check()
    assert installed(tmp_path / "pinned") == {"corp_util-2.0.0.dist-info"}
    assert "broken build, use 1.0" in pinned.stdout + pinned.stderr

    uv_cache = tmp_path / "uv-cache"
    result = await uv_pip_install(index, tmp_path / "uv", "corp-util", cache_dir=uv_cache)
    result.check()
    assert installed(tmp_path / "uv") == {"corp_util-1.0.0.dist-info"}
    pinned = await uv_pip_install(
        index, tmp_path / "uv-pinned", "corp-util==2.0.0", cache_dir=uv_cache
    )
    pinned.check()
    assert installed(tmp_path / "uv-pinned") == {"corp_util-2.0.0.dist-info"}


async def _with_upload_times(cache: Path, key: str, times: dict[str, float]) -> None:
    """Give the stored page the upload times an upstream that knows them would have given."""
    store = await Store.open(cache / DB_NAME)
    try:
        row = await store.get_page(key)
        assert row is not None
        project = decode_page(json.loads(row.model))
        assert isinstance(project, Project)
        files = tuple(
            dataclasses.replace(f, upload_time=iso(times[f.filename])) for f in project.files
        )
        stored = json.dumps(encode_page(project.with_files(files)))
        await store.put_page(key, stored, row.fetched_at)
    finally:
        await store.close()


async def test_offline_the_age_rules_use_the_upload_times_the_cache_holds(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    old = gitlab.add_wheel(42, "corp-util", "1.0.0")
    young = gitlab.add_wheel(42, "corp-util", "2.0.0")
    cache = tmp_path / "cache"
    online = await make_proxy(cache)
    for wheel in (old, young):
        assert (await fetch(url_of(online.url, wheel))).status == 200
    assert (await page(online, "corp-util")).status == 200
    await online.stop()
    now = time.time()
    key = PageKey("projects/42", "corp-util").encode()
    await _with_upload_times(cache, key, {old.filename: now - 30 * DAY, young.filename: now - DAY})

    proxy = await make_proxy(
        cache, cache={"offline": True}, policy={"min_age_internal": 7 * DAY, "min_age": 30 * DAY}
    )
    index = proxy.index_url("projects/42")
    result = await pip_install(index, tmp_path / "t", "corp-util")
    result.check()
    assert installed(tmp_path / "t") == {"corp_util-1.0.0.dist-info"}

    pinned = await pip_install(index, tmp_path / "p", "corp-util==2.0.0")
    assert pinned.returncode != 0
    assert "from versions: 1.0.0" in pinned.stderr

    direct = await pip_install(index, tmp_path / "d", url_of(proxy.url, young))
    assert direct.returncode != 0
    assert "403 Client Error" in direct.stderr
    assert f"{young.filename} is younger than policy.min_age_internal (7d)" in direct.stderr
    refused = await fetch(url_of(proxy.url, young))
    assert refused.status == 403
    assert refused.json() == {
        "error": refused.json()["error"],
        "rule": "min_age_internal",
        "available_at": iso(now + 6 * DAY),
    }
    metadata = await fetch(url_of(proxy.url, young) + ".metadata")
    assert metadata.status == 403

    code, out = await _cli(tmp_path, gitlab, cache, "explain", "projects/42", "corp-util")
    assert code == 0, out
    lines = {line.split()[1]: line for line in out.splitlines() if "corp_util-" in line}
    assert "younger than policy.min_age_internal" in lines[young.filename]
    assert "30d" in lines[old.filename] and "yes" in lines[old.filename]
    code, out = await _cli(tmp_path, gitlab, cache, "explain", "projects/42", "not-cached")
    assert code == 1
    assert "explain projects/42 not-cached: not in the cache" in out


async def _cli(tmp_path: Path, gitlab: FakeGitLab, cache: Path, *args: str) -> tuple[int, str]:
    config = write_config(
        tmp_path / "c.toml",
        {
            "upstream": {"url": gitlab.url, "token": TOKEN},
            "cache": {"dir": str(cache), "offline": True},
            "policy": {"min_age_internal": "7d"},
        },
    )
    result = await run(
        [sys.executable, "-m", "proxy", "--config", str(config), *args], env=clean_env()
    )
    return result.returncode, result.stdout + result.stderr


async def test_explain_online_lists_every_file_with_its_yank(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    old = gitlab.add_wheel(42, "corp-util", "1.0.0")
    old.uploaded_at = time.time() - 30 * 86400
    gitlab.add_wheel(42, "corp-util", "2.0.0")
    config = write_config(
        tmp_path / "c.toml",
        {
            "upstream": {"url": gitlab.url, "token": TOKEN},
            "cache": {"dir": str(tmp_path / "cache")},
            "policy": {"yanked": ["corp-util==2.0.0: broken"], "min_age_internal": "1d"},
        },
    )
    result = await run(
        [
            sys.executable,
            "-m",
            "proxy",
            "--config",
            str(config),
            "explain",
            "projects/42",
            "corp-util",
        ],
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "corp_util-" in line]
    assert len(rows) == 2
    assert "yes: broken" in rows[1]
    # Upload times from GitLab's Packages API: the month-old file is shown, the new one hidden.
    assert "min_age_internal" not in rows[0]
    assert "min_age_internal" in rows[1]
    assert not any("unknown" in row for row in rows)
    assert gitlab.counts["page"] == 1


@pytest.mark.parametrize(
    ("section", "env", "key"),
    [
        ({"min_age": "soon"}, {}, "policy.min_age"),
        ({"protected": ["acme/*"]}, {}, "policy.protected"),
        ({"yanked": ["corp-util: why"]}, {}, "policy.yanked"),
        ({}, {"GITLAB_PYPI_PROXY_POLICY_UNKNOWN_AGE": "sometimes"}, "policy.unknown_age"),
    ],
)
async def test_bad_policy_settings_stop_serve_with_one_line(
    tmp_path: Path, section: dict[str, object], env: dict[str, str], key: str
) -> None:
    config = write_config(tmp_path / "c.toml", {"policy": section} if section else {})
    result = await run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)], env=clean_env(**env)
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert key in result.stderr


def _ago(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - seconds))


@dataclass
class Aged:
    public: FakePublicIndex
    old: FakeFile
    young: FakeFile


@pytest.fixture
def aged(public: FakePublicIndex) -> Aged:
    """tiny-json 1.0.0, a month old, and 1.1.0, uploaded a day ago, on the public index."""
    old = public.add_wheel("tiny-json", "1.0.0", upload_time=_ago(30 * DAY))
    young = public.add_wheel("tiny-json", "1.1.0", upload_time=_ago(DAY))
    return Aged(public, old, young)


async def test_pip_installs_the_newest_public_version_old_enough(
    gitlab: FakeGitLab, aged: Aged, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy(upstream=forwarding(aged.public, "cache"), policy={"min_age": 7 * DAY})
    index = proxy.index_url("projects/42")
    result = await pip_install(index, tmp_path / "t", "tiny-json")
    result.check()
    assert installed(tmp_path / "t") == {"tiny_json-1.0.0.dist-info"}
    files = (await page(proxy, "tiny-json")).json()["files"]
    assert [f["filename"] for f in files] == ["tiny_json-1.0.0-py3-none-any.whl"]

    pinned = await pip_install(index, tmp_path / "p", "tiny-json==1.1.0")
    assert pinned.returncode != 0
    assert "from versions: 1.0.0" in pinned.stderr

    young = aged.young
    direct = await pip_install(index, tmp_path / "d", url_of(proxy.url, young))
    assert direct.returncode != 0
    assert (
        f"403 Client Error: {young.filename} is younger than policy.min_age (7d): available from"
        in direct.stderr
    )
    refused = await fetch(url_of(proxy.url, young))
    assert refused.json()["rule"] == "min_age"
    assert all(young.filename not in r.path for r in aged.public.requests)
    _, samples = await scrape(proxy)
    assert value(samples, "gitlab_pypi_proxy_policy_blocks_total", rule="min_age") == 2


async def _as_stored_before_origins(cache: Path, key: str) -> None:
    """Rewrite a stored page as releases before `Distribution.public` wrote it: no "public"."""
    store = await Store.open(cache / DB_NAME)
    try:
        row = await store.get_page(key)
        assert row is not None
        model = json.loads(row.model)
        origins = [entry.pop("public", False) for entry in model["model"]["files"]]
        assert origins == [True, True]
        await store.put_page(key, json.dumps(model), row.fetched_at)
    finally:
        await store.close()


async def test_a_forwarded_page_stored_before_files_had_an_origin_keeps_min_age(
    gitlab: FakeGitLab, aged: Aged, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Its links say its files are the public index's: min_age, not min_age_internal, holds
    them, and the JSON a proxy in front reads marks them so."""
    cache = tmp_path / "cache"
    before = await make_proxy(cache, upstream=forwarding(aged.public, "cache"))
    assert (await page(before, "tiny-json")).status == 200
    for wheel in (aged.old, aged.young):
        assert (await fetch(url_of(before.url, wheel))).status == 200
    await before.stop()
    await _as_stored_before_origins(cache, PageKey("projects/42", "tiny-json").encode())

    proxy = await make_proxy(
        cache,
        cache={"offline": True},
        upstream=forwarding(aged.public, "cache"),
        policy={"min_age": 7 * DAY},
    )
    files = (await page(proxy, "tiny-json")).json()["files"]
    assert [f["filename"] for f in files] == [aged.old.filename]
    assert files[0]["_public-index"] is True
    refused = await fetch(url_of(proxy.url, aged.young))
    assert refused.status == 403, refused.body
    assert refused.json()["rule"] == "min_age"


async def test_exemptions_lift_the_minimum_age(
    gitlab: FakeGitLab, aged: Aged, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy(
        upstream=forwarding(aged.public, "cache"),
        policy={"min_age": 7 * DAY, "exempt": ("tiny-json==1.1.0",)},
    )
    result = await pip_install(proxy.index_url("projects/42"), tmp_path / "t", "tiny-json")
    result.check()
    assert installed(tmp_path / "t") == {"tiny_json-1.1.0.dist-info"}


async def test_min_age_internal_is_separate_from_min_age(
    gitlab: FakeGitLab, aged: Aged, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """GitLab's own packages install at once under a public minimum age, even with unknown
    upload times denied: no minimum applies to them; one of their own hides them."""
    gitlab.add_wheel(42, "corp-app", "1.0.0", requires=["tiny-json"])
    public_only = await make_proxy(
        tmp_path / "a",
        upstream=forwarding(aged.public, "cache"),
        policy={"min_age": 7 * DAY, "unknown_age": "deny"},
    )
    result = await pip_install(public_only.index_url("projects/42"), tmp_path / "t", "corp-app")
    result.check()
    assert installed(tmp_path / "t") == {"corp_app-1.0.0.dist-info", "tiny_json-1.0.0.dist-info"}

    both = await make_proxy(
        tmp_path / "b",
        upstream=forwarding(aged.public, "cache"),
        policy={"min_age": 7 * DAY, "min_age_internal": 3600, "unknown_age": "deny"},
    )
    files = (await page(both, "corp-app")).json()["files"]
    assert files == []


async def test_a_file_appears_once_old_enough_without_a_refetch(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    public.add_wheel("tiny-json", "1.0.0", upload_time=_ago(30 * DAY))
    fresh = public.add_wheel("tiny-json", "1.1.0", upload_time=_ago(0))
    proxy = await make_proxy(upstream=forwarding(public, "cache"), policy={"min_age": 2})
    first = await page(proxy, "tiny-json")
    assert [f["filename"] for f in first.json()["files"]] == ["tiny_json-1.0.0-py3-none-any.whl"]
    # No cache may keep the page past the moment the new file shows.
    assert int(first.headers["Cache-Control"].removeprefix("max-age=")) <= 2

    async def shown() -> bool:
        answer = await page(proxy, "tiny-json")
        return fresh.filename in {f["filename"] for f in answer.json()["files"]}

    await eventually(shown, "the new file shows once two seconds old")
    later = await page(proxy, "tiny-json")
    assert later.headers["X-Cache"] == "HIT"
    assert later.headers["ETag"] != first.headers["ETag"]
    assert public.counts["page"] == 1
    assert (await fetch(url_of(proxy.url, fresh))).status == 200


DEPLOY_TOKEN = "gldt-deploy-token-abcdef123456"


def _gitlab_wheel(gitlab: FakeGitLab, version: str, age: float) -> FakeFile:
    """corp-util `version` in project 42, uploaded `age` seconds ago (the Packages API says so)."""
    wheel = gitlab.add_wheel(42, "corp-util", version)
    wheel.uploaded_at = time.time() - age
    return wheel


async def test_pip_installs_the_newest_gitlab_version_old_enough_by_the_packages_api(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    _gitlab_wheel(gitlab, "1.0.0", 30 * DAY)
    young = _gitlab_wheel(gitlab, "2.0.0", 600)
    proxy = await make_proxy(policy={"min_age_internal": 3600, "min_age": 30 * DAY})
    index = proxy.index_url("projects/42")
    result = await pip_install(index, tmp_path / "t", "corp-util")
    result.check()
    assert installed(tmp_path / "t") == {"corp_util-1.0.0.dist-info"}

    pinned = await pip_install(index, tmp_path / "p", "corp-util==2.0.0")
    assert pinned.returncode != 0
    assert "from versions: 1.0.0" in pinned.stderr
    direct = await pip_install(index, tmp_path / "d", url_of(proxy.url, young))
    assert direct.returncode != 0
    assert (
        f"403 Client Error: {young.filename} is younger than policy.min_age_internal (1h)"
        in direct.stderr
    )
    refused = (await fetch(url_of(proxy.url, young))).json()
    assert refused["rule"] == "min_age_internal"
    assert refused["available_at"] == iso(young.uploaded_at + 3600)
    assert not any(young.filename in r.path for r in gitlab.requests if r.kind == "file")


async def test_unknown_age_deny_hides_files_a_deploy_token_cannot_date(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A deploy token cannot read the Packages API: no upload times, so under a minimum age
    `unknown_age` decides; the proxy's personal token dates the same file and shows it."""
    wheel = _gitlab_wheel(gitlab, "1.0.0", 30 * DAY)
    gitlab.deploy_tokens.add(DEPLOY_TOKEN)
    rules = {"min_age_internal": DAY, "unknown_age": "deny"}
    deploy = await make_proxy(tmp_path / "a", upstream={"token": DEPLOY_TOKEN}, policy=rules)
    assert (await page(deploy, "corp-util")).json()["files"] == []
    refused = await fetch(url_of(deploy.url, wheel))
    assert refused.status == 403
    assert refused.json() == {
        "error": f"{wheel.filename} has no known upload time, and policy.unknown_age = 'deny' "
        "refuses such files under a minimum age",
        "rule": "unknown_age",
        "available_at": None,
    }
    failed = await pip_install(deploy.index_url("projects/42"), tmp_path / "f", "corp-util")
    assert failed.returncode != 0

    allowed = await make_proxy(
        tmp_path / "b",
        upstream={"token": DEPLOY_TOKEN},
        policy={"min_age_internal": DAY, "unknown_age": "allow"},
    )
    assert len((await page(allowed, "corp-util")).json()["files"]) == 1
    dated = await make_proxy(tmp_path / "c", policy=rules)
    result = await pip_install(dated.index_url("projects/42"), tmp_path / "t", "corp-util")
    result.check()
    assert installed(tmp_path / "t") == {"corp_util-1.0.0.dist-info"}


async def test_a_young_file_of_a_release_another_project_also_holds_is_hidden(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A group lists corp-util 1.0 of two projects: GitLab's Packages API has a row for each,
    a page of other names apart. A wheel pushed today to the older row's release is dated too,
    so pip is not given it."""
    gitlab.add_project(44, "platform/lib", group_id=7)
    # `package_name` matches substrings: 100 names with "corp" in them, of 20 days ago.
    for n in range(100):
        filename = f"corp_tool{n}-1.0-py3-none-any.whl"
        gitlab.add_file(42, f"corp-tool{n}", "1.0", filename, b"%d" % n).uploaded_at = (
            time.time() - 20 * DAY
        )
    old = gitlab.add_wheel(44, "corp-util", "1.0")
    old.uploaded_at = time.time() - 30 * DAY
    # The interpreter's own tag: pip prefers it to py3-none-any, so it takes it if listed.
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-none-any"
    young = gitlab.add_wheel(44, "corp-util", "1.0", tag=tag)
    young.uploaded_at = time.time() - 600
    other = gitlab.add_wheel(42, "corp-util", "1.0", tag="py2.py3-none-any")
    other.uploaded_at = time.time() - 10 * DAY
    proxy = await make_proxy(policy={"min_age_internal": DAY})
    group = f"{proxy.url}/api/v4/groups/7/-/packages/pypi"
    answer = await fetch(f"{group}/simple/corp-util/", Accept=JSON_V1, Accept_Encoding="identity")
    files = answer.json()["files"]
    assert sorted(f["filename"] for f in files) == sorted([old.filename, other.filename])
    assert all("upload-time" in f for f in files)
    result = await pip_install(proxy.index_url("groups/7"), tmp_path / "t", "corp-util")
    result.check()
    assert installed(tmp_path / "t") == {"corp_util-1.0.dist-info"}
    assert not any(young.filename in r.path for r in gitlab.requests if r.kind == "file")
    refused = await fetch(f"{group}/files/{young.sha256}/{young.filename}")
    assert refused.status == 403 and refused.json()["rule"] == "min_age_internal"


async def test_a_page_served_before_a_slow_packages_api_answered_is_not_kept_undated(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    """Under a minimum age, a page that went without upload times because GitLab's Packages
    API was slow is fresh only until its answer may be in, not for index_ttl: the young file
    it showed undated is hidden and refused as soon as the answer is kept."""
    _gitlab_wheel(gitlab, "1.0.0", 30 * DAY)
    young = _gitlab_wheel(gitlab, "2.0.0", 600)
    # Slower than a page waits (a sixth of upstream.timeout), within upstream.timeout.
    gitlab.api_delay = 1.0
    proxy = await make_proxy(upstream={"timeout": 3.0}, policy={"min_age_internal": DAY})
    first = (await page(proxy, "corp-util")).json()["files"]
    assert len(first) == 2 and not any("upload-time" in f for f in first)

    async def answered() -> bool:
        # The three calls of the learn (the versions, then each one's files) answered.
        return [r.status for r in gitlab.api_requests] == [200, 200, 200]

    await eventually(answered, "GitLab's Packages API answered")
    later = await page(proxy, "corp-util")
    assert [f["filename"] for f in later.json()["files"]] == ["corp_util-1.0.0-py3-none-any.whl"]
    assert later.headers["X-Cache"] == "MISS"
    refused = await fetch(url_of(proxy.url, young))
    assert refused.status == 403 and refused.json()["rule"] == "min_age_internal"


@pytest.mark.parametrize(
    ("scope", "name", "said"),
    [
        # GitLab forwards a name it lacks: where to, and that the proxy passes clients on.
        ("projects/42", "not-here", "GitLab forwards it to https://pypi.org/simple/not-here/"),
        # A project the token cannot read is one GitLab says does not exist.
        ("projects/999", "corp-util", "404 Project Not Found"),
    ],
)
async def test_explain_of_what_gitlab_does_not_list_is_one_line_naming_it(
    gitlab: FakeGitLab, tmp_path: Path, scope: str, name: str, said: str
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    config = write_config(
        tmp_path / "c.toml",
        {
            "upstream": {"url": gitlab.url, "token": TOKEN},
            "cache": {"dir": str(tmp_path / "cache")},
            "policy": {"min_age_internal": "1d"},
        },
    )
    result = await run(
        [sys.executable, "-m", "proxy", "--config", str(config), "explain", scope, name],
        env=clean_env(),
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"gitlab-pypi-proxy: explain {scope} {name}: ")
    assert said in result.stderr
