"""The fake GitLab, object storage and public index behave as GitLab and PyPI do; wheels install."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from tests.support.fake_gitlab import CHALLENGE, FakeGitLab, FakePublicIndex
from tests.support.harness import clean_env, run
from tests.support.polling import eventually
from tests.support.wheels import make_sdist, make_wheel, wheel_metadata

TOKEN = "glpat-fake-test-token"
API = "/api/v4/projects/42/packages/pypi"
GROUP_API = "/api/v4/groups/7/-/packages/pypi"

# Verbatim copy of /work/shared/samples/gitlab-project-package-page.html.
PROJECT_PAGE_SAMPLE = (
    "<!DOCTYPE html>\n"
    "        <html>\n"
    "          <head>\n"
    "            <title>Links for My.Pkg</title>\n"
    "          </head>\n"
    "          <body>\n"
    "            <h1>Links for My.Pkg</h1>\n"
    '            <a href="https://gitlab.example.com/api/v4/projects/42/packages/pypi/fil'
    "es/ff4c0e2a727f902fc5ea4d5b5475b9e58ef00d6a628c30f8bf1d33b909cd1f04/my_pkg-1.0.0-py3"
    "-none-any.whl#sha256=ff4c0e2a727f902fc5ea4d5b5475b9e58ef00d6a628c30f8bf1d33b909cd1f0"
    '4" data-requires-python="&gt;=3.8">my_pkg-1.0.0-py3-none-any.whl</a><a href="https:/'
    "/gitlab.example.com/api/v4/projects/42/packages/pypi/files/c0752a2c6ec1b4d76af024883"
    "01a82385e1d808b489c1f91ccb4203b413e00f1/my_pkg-1.0.0.tar.gz#sha256=c0752a2c6ec1b4d76"
    'af02488301a82385e1d808b489c1f91ccb4203b413e00f1" data-requires-python="&gt;=3.8">my_'
    'pkg-1.0.0.tar.gz</a><a href="https://gitlab.example.com/api/v4/projects/42/packages/'
    "pypi/files/c10961407011b4f4d54edc9fd6207f5bf03de713628ef0ddfd28a7483bae63eb/my_pkg-1"
    ".1.0-py3-none-any.whl#sha256=c10961407011b4f4d54edc9fd6207f5bf03de713628ef0ddfd28a74"
    '83bae63eb" data-requires-python="&gt;=3.9,&lt;4">my_pkg-1.1.0-py3-none-any.whl</a><a'
    ' href="https://gitlab.example.com/api/v4/projects/42/packages/pypi/files/e8817d18661'
    "6a36fb471eeebc5ff6d0c16cfdb7da1c5bd228160615d0ef7fa45/my_pkg-1.1.0-cp311-cp311-manyl"
    "inux_2_17_x86_64.manylinux2014_x86_64.whl#sha256=e8817d186616a36fb471eeebc5ff6d0c16c"
    'fdb7da1c5bd228160615d0ef7fa45" data-requires-python="&gt;=3.9,&lt;4">my_pkg-1.1.0-cp'
    '311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl</a><a href="https://gitlab.'
    "example.com/api/v4/projects/42/packages/pypi/files/4a750a0b6cd7d3bea3a3c219ef455e124"
    "2d6d15e1c1cea35ad4d44c4ce213f2f/my_pkg-2.0.0rc1.tar.gz#sha256=4a750a0b6cd7d3bea3a3c2"
    '19ef455e1242d6d15e1c1cea35ad4d44c4ce213f2f" data-requires-python="">my_pkg-2.0.0rc1.'
    "tar.gz</a>\n"
    "          </body>\n"
    "        </html>\n"
)

# Verbatim copy of /work/shared/samples/gitlab-group-index-page.html.
GROUP_INDEX_SAMPLE = (
    "<!DOCTYPE html>\n"
    "        <html>\n"
    "          <head>\n"
    "            <title>Links for Platform Team</title>\n"
    "          </head>\n"
    "          <body>\n"
    "            <h1>Links for Platform Team</h1>\n"
    '            <a href="https://gitlab.example.com/api/v4/groups/7/-/packages/pypi/simp'
    'le/my-pkg" data-requires-python="&gt;=3.8">My.Pkg</a><a href="https://gitlab.example'
    '.com/api/v4/groups/7/-/packages/pypi/simple/my-pkg" data-requires-python="&gt;=3.9,&'
    'lt;4">My.Pkg</a><a href="https://gitlab.example.com/api/v4/groups/7/-/packages/pypi/'
    'simple/my-pkg" data-requires-python="">My.Pkg</a><a href="https://gitlab.example.com'
    '/api/v4/groups/7/-/packages/pypi/simple/other-tool" data-requires-python="">other_to'
    'ol</a><a href="https://gitlab.example.com/api/v4/groups/7/-/packages/pypi/simple/zop'
    'e-interface" data-requires-python="&gt;=3.9">Zope.Interface</a>\n'
    "          </body>\n"
    "        </html>\n"
)


def basic(password: str, username: str = "anyone") -> dict[str, str]:
    raw = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


AUTH = basic(TOKEN)


async def fetch(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, resp.headers, await resp.read()


@pytest.fixture
async def gl() -> AsyncIterator[FakeGitLab]:
    """Group 7 'platform' (subgroup 'platform/sub') with private projects 42 and 44."""
    async with FakeGitLab(token=TOKEN) as fake:
        fake.add_group(7, "platform", name="Platform Team")
        fake.add_group(8, "platform/sub")
        fake.add_project(42, "platform/tools", group_id=7)
        fake.add_project(44, "platform/sub/lib", group_id=8)
        yield fake


# Access control.


async def test_private_project_challenges_anonymous_and_hides_from_strangers(
    gl: FakeGitLab,
) -> None:
    status, headers, body = await fetch(gl.url + API + "/simple/")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="GitLab Packages Registry"'
    assert body == b'{"message":"401 Unauthorized"}'
    # An unknown token is no token: still the challenge, so pip retries with credentials.
    status, _, _ = await fetch(gl.url + API + "/simple/", basic("glpat-unknown"))
    assert status == 401
    # An id GitLab does not know is 404 for everyone, anonymous included.
    for credentials in [None, AUTH]:
        status, _, body = await fetch(
            gl.url + "/api/v4/projects/999/packages/pypi/simple/", credentials
        )
        assert (status, body) == (404, b'{"message":"404 Project Not Found"}')
    status, _, body = await fetch(gl.url + "/api/v4/groups/99/-/packages/pypi/simple/")
    assert (status, body) == (404, b'{"message":"404 Group Not Found"}')
    assert gl.counts["unauthorized"] == 2
    assert gl.counts["notfound"] == 3


async def test_token_is_accepted_as_basic_password_or_header(gl: FakeGitLab) -> None:
    gl.job_tokens.add("job-123")
    accepted = [
        AUTH,
        basic(TOKEN, ""),
        {"Authorization": f"Bearer {TOKEN}"},
        {"Private-Token": TOKEN},
        {"Deploy-Token": TOKEN},
        basic("job-123", "gitlab-ci-token"),
    ]
    for headers in accepted:
        status, _, _ = await fetch(gl.url + API + "/simple/", headers)
        assert status == 200, headers
    # A job token only counts as Basic with the username GitLab reserves for it: the Job-Token
    # header is not read on these routes, so its caller is anonymous.
    for headers in [basic("job-123", "someone"), {"Job-Token": "job-123"}]:
        status, _, _ = await fetch(gl.url + API + "/simple/", headers)
        assert status == 401, headers
    # A bad job token is refused even where anonymous is welcome.
    gl.add_project(43, "platform/open", group_id=7, public=True)
    open_api = "/api/v4/projects/43/packages/pypi/simple/"
    assert (await fetch(gl.url + open_api, {"Job-Token": "job-bad"}))[0] == 200
    assert (await fetch(gl.url + open_api, basic("job-bad", "gitlab-ci-token")))[0] == 401
    assert gl.requests[0].headers["Authorization"] == AUTH["Authorization"]


async def test_per_token_access_public_projects_and_revocation(gl: FakeGitLab) -> None:
    gl.add_project(43, "platform/open", group_id=7, public=True)
    gl.tokens["glpat-lib-only"] = {44}
    lib_only = basic("glpat-lib-only")
    assert (await fetch(gl.url + API + "/simple/", lib_only))[0] == 404
    assert (await fetch(gl.url + "/api/v4/projects/44/packages/pypi/simple/", lib_only))[0] == 200
    assert (await fetch(gl.url + "/api/v4/projects/43/packages/pypi/simple/"))[0] == 200
    # The group shows each caller only what it may read.
    gl.add_wheel(42, "secret-tool", "1.0")
    gl.add_wheel(43, "open-tool", "1.0")
    gl.add_wheel(44, "lib-tool", "1.0")
    _, _, anonymous = await fetch(gl.url + GROUP_API + "/simple/")
    _, _, restricted = await fetch(gl.url + GROUP_API + "/simple/", lib_only)
    assert b">open-tool<" in anonymous and b"tool<" not in anonymous.replace(b">open-tool<", b"")
    assert b">lib-tool<" in restricted and b">secret-tool<" not in restricted
    # A revoked token is refused everywhere, even where anonymous is welcome, with GitLab's
    # OAuth challenge and an {"error": ...} body, in whatever form it comes.
    gl.revoke("glpat-lib-only")
    for headers in [lib_only, {"Private-Token": "glpat-lib-only"}]:
        status, got, body = await fetch(
            gl.url + "/api/v4/projects/43/packages/pypi/simple/", headers
        )
        assert status == 401
        assert got["WWW-Authenticate"].startswith('Bearer realm="Protected by OAuth 2.0"')
        assert 'error="invalid_token"' in got["WWW-Authenticate"]
        assert json.loads(body)["error"] == "invalid_token"


async def test_group_with_nothing_visible_challenges_anonymous(gl: FakeGitLab) -> None:
    status, headers, _ = await fetch(gl.url + GROUP_API + "/simple/")
    assert status == 401
    assert "WWW-Authenticate" in headers
    gl.tokens["glpat-elsewhere"] = set()
    assert (await fetch(gl.url + GROUP_API + "/simple/", basic("glpat-elsewhere")))[0] == 404
    assert (await fetch(gl.url + "/api/v4/groups/99/-/packages/pypi/simple/", AUTH))[0] == 404


# Pages.


# The REST Packages API.


async def api_json(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDictProxy[str], object]:
    status, got, body = await fetch(url, headers)
    return status, got, json.loads(body)


async def test_packages_api_lists_versions_by_substring_paginated(gl: FakeGitLab) -> None:
    for minor in range(25):
        gl.add_wheel(42, "Corp.Util", f"1.{minor}")
    gl.add_wheel(42, "corp-util-extra", "1.0")
    gl.add_wheel(42, "other", "1.0")
    url = gl.url + "/api/v4/projects/42/packages?package_type=pypi&package_name=util"
    status, headers, rows = await api_json(url, {"Private-Token": TOKEN})
    assert status == 200
    assert isinstance(rows, list) and len(rows) == 20  # the default page
    assert (headers["X-Page"], headers["X-Per-Page"], headers["X-Total"]) == ("1", "20", "26")
    assert headers["X-Next-Page"] == "2"
    assert set(rows[0]) >= {"id", "name", "version", "created_at", "package_type", "project_id"}
    assert (rows[0]["name"], rows[0]["version"], rows[0]["project_id"]) == ("Corp.Util", "1.0", 42)
    status, headers, rows = await api_json(url + "&per_page=500&page=1", {"Private-Token": TOKEN})
    assert headers["X-Per-Page"] == "100" and headers["X-Next-Page"] == ""
    assert isinstance(rows, list)
    # A substring in any case: the caller must filter names exactly itself.
    assert {r["name"] for r in rows} == {"Corp.Util", "corp-util-extra"}
    _, _, newest = await api_json(
        url + "&order_by=created_at&sort=desc&per_page=1", {"Authorization": f"Bearer {TOKEN}"}
    )
    assert isinstance(newest, list) and newest[0]["name"] == "corp-util-extra"


async def test_package_files_carry_size_digest_and_upload_time(gl: FakeGitLab) -> None:
    wheel = gl.add_wheel(42, "corp-util", "1.0")
    sdist = gl.add_sdist(42, "corp-util", "1.0")
    wheel.uploaded_at = 1_796_032_800.25  # 2026-11-30T10:00:00.250Z
    base = gl.url + "/api/v4/projects/42/packages"
    _, _, rows = await api_json(base + "?package_name=corp-util", {"Private-Token": TOKEN})
    assert isinstance(rows, list)
    assert rows[0]["created_at"] == "2026-11-30T10:00:00.250Z"  # its first file's
    status, _, files = await api_json(
        f"{base}/{rows[0]['id']}/package_files", {"Private-Token": TOKEN}
    )
    assert status == 200 and isinstance(files, list)
    assert [(f["file_name"], f["size"], f["file_sha256"]) for f in files] == [
        (wheel.filename, len(wheel.content), wheel.sha256),
        (sdist.filename, len(sdist.content), sdist.sha256),
    ]
    assert files[0]["created_at"] == "2026-11-30T10:00:00.250Z"
    assert (await fetch(f"{base}/999999/package_files", {"Private-Token": TOKEN}))[0] == 404
    assert gl.counts["api"] == 3


async def test_packages_api_takes_rest_tokens_only(gl: FakeGitLab) -> None:
    gl.add_wheel(42, "corp-util", "1.0")
    gl.deploy_tokens.add("gldt-deploy")
    url = gl.url + "/api/v4/projects/42/packages?package_name=corp-util"
    # Deploy tokens read the registry routes, as Basic password or their own header...
    for headers in [basic("gldt-deploy"), {"Deploy-Token": "gldt-deploy"}]:
        assert (await fetch(gl.url + API + "/simple/corp-util", headers))[0] == 200
    # ... but the REST API takes neither them nor Basic at all.
    refused = [
        AUTH,
        basic("gldt-deploy"),
        {"Deploy-Token": "gldt-deploy"},
        {"Private-Token": "gldt-deploy"},
        {"Authorization": "Bearer gldt-deploy"},
    ]
    for headers in refused:
        status, _, body = await fetch(url, headers)
        assert (status, body) == (401, b'{"message":"401 Unauthorized"}'), headers
    # Anonymous sees no private project (404, as the REST API hides it); a stranger neither.
    gl.tokens["glpat-elsewhere"] = {44}
    assert (await fetch(url))[0] == 404
    assert (await fetch(url, {"Private-Token": "glpat-elsewhere"}))[0] == 404
    assert gl.counts["api"] == 7
    assert gl.counts["unauthorized"] == 0


async def test_group_packages_rows_name_their_readable_projects(gl: FakeGitLab) -> None:
    gl.add_wheel(42, "corp-util", "1.0")
    gl.add_wheel(44, "corp-util", "2.0")
    gl.tokens["glpat-lib-only"] = {44}
    url = gl.url + "/api/v4/groups/7/packages?package_type=pypi&package_name=corp-util"
    _, _, rows = await api_json(url, {"Private-Token": TOKEN})
    assert isinstance(rows, list)
    assert [(r["version"], r["project_id"]) for r in rows] == [("1.0", 42), ("2.0", 44)]
    _, _, rows = await api_json(url, {"Private-Token": "glpat-lib-only"})
    assert isinstance(rows, list)
    assert [(r["version"], r["project_id"]) for r in rows] == [("2.0", 44)]
    assert (await fetch(url))[0] == 404


async def test_package_page_is_byte_for_byte_gitlabs_shape() -> None:
    async with FakeGitLab(token=TOKEN, external_url="https://gitlab.example.com/") as fake:
        fake.add_project(42, "platform/tools")
        # The sample's digests are made up, so store them as a lying uploader would.
        for version, filename, sha256, requires_python in [
            ("1.0.0", "my_pkg-1.0.0-py3-none-any.whl", "ff4c0e2a", ">=3.8"),
            ("1.0.0", "my_pkg-1.0.0.tar.gz", "c0752a2c", ">=3.8"),
            ("1.1.0", "my_pkg-1.1.0-py3-none-any.whl", "c1096140", ">=3.9,<4"),
            (
                "1.1.0",
                "my_pkg-1.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                "e8817d18",
                ">=3.9,<4",
            ),
            ("2.0.0rc1", "my_pkg-2.0.0rc1.tar.gz", "4a750a0b", ""),
        ]:
            full = next(
                part.split("/")[0]
                for part in PROJECT_PAGE_SAMPLE.split("files/")[1:]
                if part.startswith(sha256)
            )
            fake.add_file(
                42, "My.Pkg", version, filename, b"x", requires_python=requires_python, sha256=full
            )
        status, headers, body = await fetch(fake.server_url + API + "/simple/My.Pkg/", AUTH)
        assert status == 302, "GitLab does not normalize dots, it only lowercases"
        status, headers, body = await fetch(fake.server_url + API + "/simple/My-Pkg", AUTH)
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert body.decode() == PROJECT_PAGE_SAMPLE


async def test_group_index_repeats_names_once_per_version() -> None:
    async with FakeGitLab(token=TOKEN, external_url="https://gitlab.example.com") as fake:
        fake.add_group(7, "platform", name="Platform Team")
        fake.add_project(42, "platform/tools", group_id=7)
        fake.add_project(43, "platform/more", group_id=7)
        fake.add_wheel(42, "My.Pkg", "1.0.0", requires_python=">=3.8")
        fake.add_wheel(42, "My.Pkg", "1.1.0", requires_python=">=3.9,<4")
        fake.add_wheel(43, "My.Pkg", "2.0.0rc1")
        fake.add_sdist(43, "other_tool", "0.1")
        fake.add_wheel(42, "Zope.Interface", "6.0", requires_python=">=3.9")
        status, _, body = await fetch(fake.server_url + GROUP_API + "/simple", AUTH)
    assert status == 200
    assert body.decode() == GROUP_INDEX_SAMPLE


async def test_project_index_links_by_numeric_id_and_requires_python_is_per_file(
    gl: FakeGitLab,
) -> None:
    gl.add_wheel(42, "corp-util", "1.0", requires_python=">=3.8")
    gl.add_sdist(42, "corp-util", "1.0", requires_python=">=3.9")
    status, _, body = await fetch(
        gl.url + "/api/v4/projects/platform%2Ftools/packages/pypi/simple", AUTH
    )
    assert status == 200
    page = body.decode()
    assert "<title>Links for tools</title>" in page
    assert (
        f'<a href="{gl.url}{API}/simple/corp-util" data-requires-python="&gt;=3.9">corp-util</a>'
        in page
    )
    # Newest GitLab keeps each file's own value, falling back to the version's for files
    # uploaded without one.
    gl.add_file(42, "corp-util", "1.0", "corp_util-1.0.zip", b"zip")
    _, _, body = await fetch(gl.url + API + "/simple/corp-util/", AUTH)
    page = body.decode()
    assert page.count('data-requires-python="&gt;=3.8"') == 1
    assert page.count('data-requires-python="&gt;=3.9"') == 2


async def test_encoded_full_path_routes_and_a_literal_slash_does_not(gl: FakeGitLab) -> None:
    gl.add_wheel(44, "lib", "1.0")
    good = "/api/v4/projects/platform%2Fsub%2Flib/packages/pypi/simple/lib"
    assert (await fetch(gl.url + good, AUTH))[0] == 200
    assert gl.requests[-1].path == good
    bad = "/api/v4/projects/platform/sub/lib/packages/pypi/simple/lib"
    status, headers, _ = await fetch(gl.url + bad, AUTH)
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    assert (await fetch(gl.url + "/api/v4/groups/platform%2Fsub/-/packages/pypi/simple/lib", AUTH))[
        0
    ] == 200


async def test_group_page_covers_subgroups_with_group_links(gl: FakeGitLab) -> None:
    wheel = gl.add_wheel(44, "lib", "1.0")
    status, _, body = await fetch(gl.url + GROUP_API + "/simple/lib/", AUTH)
    assert status == 200
    link = f"{gl.url}{GROUP_API}/files/{wheel.sha256}/{wheel.filename}#sha256={wheel.sha256}"
    assert f'href="{link}"' in body.decode()
    status, _, content = await fetch(link.partition("#")[0], AUTH)
    assert (status, content) == (200, wheel.content)


@pytest.mark.parametrize("requested", ["my.pkg", "my_pkg", "My_Pkg"])
async def test_name_lookup_only_lowercases_then_forwards_or_404s(
    gl: FakeGitLab, requested: str
) -> None:
    gl.add_wheel(42, "My.Pkg", "1.0")
    assert (await fetch(gl.url + API + "/simple/MY-PKG/", AUTH))[0] == 200
    status, headers, _ = await fetch(gl.url + API + f"/simple/{requested}/", AUTH)
    assert status == 302
    assert headers["Location"] == f"https://pypi.org/simple/{requested}/"
    assert gl.counts["forward"] == 1
    gl.forwarding = False
    status, _, body = await fetch(gl.url + API + f"/simple/{requested}/", AUTH)
    assert (status, body) == (404, b'{"message":"404 Package Not Found"}')


async def test_firewall_serves_the_public_page_through_its_forward_route(
    gl: FakeGitLab,
) -> None:
    async with FakePublicIndex() as public:
        gl.public_index_url = public.url
        wheel = public.add_wheel("tiny-json", "1.0")
        blocked = public.add_wheel("tiny-json", "1.1")
        gl.firewall = True
        gl.firewall_blocked.add(blocked.filename)
        status, headers, body = await fetch(gl.url + API + "/simple/tiny-json/", AUTH)
        assert status == 200
        assert (headers["Content-Disposition"], headers["Vary"]) == ("attachment", "Accept")
        host = public.url.removeprefix("http://")
        path = wheel_path = public.file_url(wheel).removeprefix(public.url + "/")
        link = f"{gl.url}{API}/forward/tiny-json/{host}/{path}"
        assert f'href="{link}"' in body.decode()
        assert public.url not in body.decode()
        # The forward route checks the firewall, then sends the client to the public host.
        status, headers, _ = await fetch(link.partition("#")[0], AUTH)
        assert (status, headers["Location"]) == (
            302,
            f"{public.url}/{wheel_path.partition('#')[0]}",
        )
        blocked_link = (
            f"{gl.url}{API}/forward/tiny-json/{host}/"
            + public.file_url(blocked).removeprefix(public.url + "/").partition("#")[0]
        )
        status, _, body = await fetch(blocked_link, AUTH)
        assert (status, body) == (403, b'{"error":"Dependency Firewall policy violation"}')
        # Only after the read check, like every route of a private project.
        assert (await fetch(link.partition("#")[0]))[0] == 401
        assert (await fetch(gl.url + API + "/simple/tiny-json/"))[0] == 401
        # A name in the project is GitLab's own page, firewall or not.
        gl.add_wheel(42, "corp-util", "1.0")
        _, _, body = await fetch(gl.url + API + "/simple/corp-util/", AUTH)
        assert "/files/" in body.decode() and "/forward/" not in body.decode()


async def test_moved_gitlab_redirects_old_paths_to_its_relative_root(gl: FakeGitLab) -> None:
    wheel = gl.add_wheel(42, "corp-util", "1.0")
    old = gl.url
    gl.moved = True
    status, headers, _ = await fetch(old + API + "/simple/corp-util/?x=1", AUTH)
    assert (status, headers["Location"]) == (301, f"/gitlab{API}/simple/corp-util/?x=1")
    status, _, body = await fetch(old + "/gitlab" + API + "/simple/corp-util/", AUTH)
    assert status == 200
    assert f"{old}/gitlab{API}/files/{wheel.sha256}/" in body.decode()
    gl.moved = False
    assert (await fetch(old + "/gitlab" + API + "/simple/corp-util/", AUTH))[0] == 404


# Files.


async def test_file_needs_exact_name_and_digest(gl: FakeGitLab) -> None:
    wheel = gl.add_wheel(42, "corp-util", "1.0")
    status, headers, body = await fetch(
        gl.url + f"{API}/files/{wheel.sha256}/{wheel.filename}", AUTH
    )
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"].startswith(f'attachment; filename="{wheel.filename}"')
    assert int(headers["Content-Length"]) == len(body)
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    for sha, name in [("0" * 64, wheel.filename), (wheel.sha256, wheel.filename.upper())]:
        status, _, body = await fetch(gl.url + f"{API}/files/{sha}/{name}", AUTH)
        assert (status, body) == (404, b'{"message":"404 Not Found"}')
    assert gl.counts["file"] == 1


async def test_object_storage_redirects_and_refuses_a_second_auth_mechanism(
    gl: FakeGitLab,
) -> None:
    gl.object_storage = True
    wheel = gl.add_wheel(42, "corp-util", "1.0")
    status, headers, _ = await fetch(gl.url + f"{API}/files/{wheel.sha256}/{wheel.filename}", AUTH)
    assert status == 302
    signed = headers["Location"]
    assert signed.startswith(gl.object_store.url) and "X-Amz-Signature=" in signed

    status, _, body = await fetch(signed, AUTH)
    assert status == 400
    assert b"Only one auth mechanism allowed" in body
    status, headers, body = await fetch(signed)
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    status, _, body = await fetch(signed.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
    assert (status, b"SignatureDoesNotMatch" in body) == (403, True)
    # Links die: a cached signed URL stops working.
    gl.signed_url_ttl = 0
    _, headers, _ = await fetch(gl.url + f"{API}/files/{wheel.sha256}/{wheel.filename}", AUTH)
    status, _, body = await fetch(headers["Location"])
    assert (status, b"Request has expired" in body) == (403, True)

    assert gl.counts["file"] == 2
    assert gl.counts["object"] == 4
    leaked = [r for r in gl.requests if r.kind == "object" and "Authorization" in r.headers]
    assert len(leaked) == 1  # only the one this test sent on purpose


# Upload.


def upload_form(filename: str, content: bytes, **fields: str) -> aiohttp.FormData:
    """The multipart body twine sends: metadata fields, then the file as `content`."""
    form = aiohttp.FormData()
    form.add_field(":action", "file_upload")
    form.add_field("protocol_version", "1")
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("content", content, filename=filename, content_type="application/octet-stream")
    return form


async def post(
    url: str, form: aiohttp.FormData, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=form, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


async def test_upload_creates_then_refuses_the_same_filename(gl: FakeGitLab) -> None:
    filename, content = make_wheel("corp-util", "1.0", requires_python=">=3.9")
    digest = hashlib.sha256(content).hexdigest()
    fields = {
        "name": "corp-util",
        "version": "1.0",
        "sha256_digest": digest,
        "requires_python": ">=3.9",
    }
    status, body = await post(gl.url + API, upload_form(filename, content, **fields), AUTH)
    assert (status, body) == (201, b'{"message":"201 Created"}')
    _, _, page = await fetch(gl.url + API + "/simple/corp-util", AUTH)
    assert f"files/{digest}/{filename}#sha256={digest}" in page.decode()
    assert 'data-requires-python="&gt;=3.9"' in page.decode()

    status, body = await post(gl.url + API, upload_form(filename, content, **fields), AUTH)
    assert (status, body) == (
        400,
        b'{"message":"400 Bad request - Validation failed: File name has already been taken"}',
    )
    assert gl.counts["upload"] == 2


async def test_upload_digest_is_stored_as_sent_or_null(gl: FakeGitLab) -> None:
    filename, content = make_wheel("corp-util", "1.0")
    real = hashlib.sha256(content).hexdigest()
    lie = "0" * 64
    fields = {"name": "corp-util", "version": "1.0", "sha256_digest": lie}
    assert (await post(gl.url + API, upload_form(filename, content, **fields), AUTH))[0] == 201
    # Accepted and listed under the claimed digest; the real one finds nothing.
    _, _, page = await fetch(gl.url + API + "/simple/corp-util", AUTH)
    assert f"files/{lie}/{filename}#sha256={lie}" in page.decode()
    assert (await fetch(gl.url + f"{API}/files/{real}/{filename}", AUTH))[0] == 404
    # Without a digest GitLab stores NULL: listed, and never downloadable by any hash.
    other, other_content = make_wheel("corp-util", "1.1")
    fields = {"name": "corp-util", "version": "1.1"}
    assert (await post(gl.url + API, upload_form(other, other_content, **fields), AUTH))[0] == 201
    _, _, page = await fetch(gl.url + API + "/simple/corp-util", AUTH)
    assert f"files//{other}#sha256=" in page.decode()
    digest = hashlib.sha256(other_content).hexdigest()
    assert (await fetch(gl.url + f"{API}/files/{digest}/{other}", AUTH))[0] == 404


async def test_upload_refusals(gl: FakeGitLab) -> None:
    filename, content = make_wheel("corp-util", "1.0")
    fields = {"name": "corp-util", "version": "1.0"}
    gl.read_only_tokens.add("glpat-reader")
    gl.tokens["glpat-reader"] = None
    gl.tokens["glpat-stranger"] = {44}
    for headers, status in [
        (None, 401),
        (basic("glpat-reader"), 403),
        (basic("glpat-stranger"), 404),
    ]:
        got, body = await post(gl.url + API, upload_form(filename, content, **fields), headers)
        assert got == status
        # A token without the write scope: GitLab's OAuth error, under `error`.
        assert (b'"error":"insufficient_scope"' in body) == (headers == basic("glpat-reader"))
    got, body = await post(gl.url + API, upload_form(filename, content, version="1.0"), AUTH)
    assert (got, body) == (400, b'{"error":"name is missing"}')
    got, body = await post(
        gl.url + API, upload_form(filename, content, name="x", version="one"), AUTH
    )
    assert (got, body) == (400, b'{"message":"Validation failed: Version is invalid"}')
    gl.max_upload_size = len(content) - 1
    got, body = await post(gl.url + API, upload_form(filename, content, **fields), AUTH)
    assert (got, body) == (400, b'{"message":"File is too large"}')
    assert gl.find_file(hashlib.sha256(content).hexdigest(), filename, None) is None


async def test_real_twine_uploads(gl: FakeGitLab, tmp_path: Path) -> None:
    filename, content = make_wheel("corp-util", "1.0", requires_python=">=3.8")
    (tmp_path / filename).write_bytes(content)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "twine",
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        gl.url + API,
        "-u",
        "__token__",
        "-p",
        TOKEN,
        str(tmp_path / filename),
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    stored = gl.find_file(hashlib.sha256(content).hexdigest(), filename, {42})
    assert stored is not None and stored.content == content
    assert stored.requires_python == ">=3.8"


# Faults.


async def test_fail_status_429_says_when_to_retry(gl: FakeGitLab) -> None:
    gl.fail_status = 429
    gl.retry_after = 7
    status, headers, body = await fetch(gl.url + API + "/simple/x/", AUTH)
    assert (status, headers["Retry-After"]) == (429, "7")
    # Rack::Attack's answer, not a Grape one: plain text and the RateLimit-* headers.
    assert body == b"Retry later\n"
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["RateLimit-Remaining"] == "0"
    assert {"RateLimit-Limit", "RateLimit-Reset", "RateLimit-ResetTime"} <= set(headers)
    assert gl.counts["page"] == 1


async def test_token_faults_answer_one_token_only(gl: FakeGitLab) -> None:
    gl.tokens["glpat-throttled"] = None
    gl.token_faults["glpat-throttled"] = 429
    gl.retry_after = 60
    status, headers, _ = await fetch(gl.url + API + "/simple/x/", basic("glpat-throttled"))
    assert (status, headers["Retry-After"]) == (429, "60")
    assert (await fetch(gl.url + API + "/simple/x/", AUTH))[0] == 302
    gl.token_faults["glpat-throttled"] = 500
    assert (await fetch(gl.url + API + "/simple/x/", basic("glpat-throttled")))[0] == 500


async def test_truncated_and_corrupt_files(gl: FakeGitLab) -> None:
    wheel = gl.add_wheel(42, "corp-util", "1.0", payload_size=300_000)
    url = gl.url + f"{API}/files/{wheel.sha256}/{wheel.filename}"
    gl.corrupt_files = True
    status, _, body = await fetch(url, AUTH)
    assert (status, len(body)) == (200, len(wheel.content))
    assert hashlib.sha256(body).hexdigest() != wheel.sha256
    gl.corrupt_files = False
    gl.truncate_files = True
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(url, AUTH)
    assert gl.requests[-1].headers["Authorization"] == AUTH["Authorization"]


async def test_down_slow_and_paced(gl: FakeGitLab) -> None:
    wheel = gl.add_wheel(42, "corp-util", "1.0", payload_size=100_000)
    gl.down = True
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fetch(gl.url + API + "/simple/", AUTH)
    assert gl.requests[-1].status == 0
    gl.down = False
    gl.delay = 5.0
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await fetch(gl.url + API + "/simple/", AUTH)
    gl.delay = 0.0
    gl.file_chunk_size = 25_000
    gl.file_chunk_delay = 0.1
    status, _, body = await fetch(gl.url + f"{API}/files/{wheel.sha256}/{wheel.filename}", AUTH)
    assert status == 200 and body == wheel.content
    assert time.monotonic() - started >= 0.3 + 0.4  # five chunks, four pauses between them


async def test_held_requests_wait_until_released(gl: FakeGitLab) -> None:
    gl.hold = release = asyncio.Event()
    held = asyncio.create_task(fetch(gl.url + API + "/simple/", AUTH))
    await eventually(lambda: gl.requests, "the request reached GitLab", interval=0.01)
    await asyncio.sleep(0.1)
    assert not held.done() and gl.requests[-1].status == 0
    release.set()
    assert (await held)[0] == 200


async def test_head_is_headers_only_and_counts_as_a_file_request(
    gl: FakeGitLab, caplog: pytest.LogCaptureFixture
) -> None:
    wheel = gl.add_wheel(42, "corp-util", "1.0", payload_size=100_000)
    url = gl.url + f"{API}/files/{wheel.sha256}/{wheel.filename}"
    # One connection: a body sent after HEAD's headers would garble the GET behind it.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        async with session.head(url, headers=AUTH) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(wheel.content))
            assert resp.headers["Accept-Ranges"] == "bytes"
            assert wheel.filename in resp.headers["Content-Disposition"]
            assert await resp.read() == b""
        async with session.get(url, headers=AUTH) as resp:
            assert (resp.status, await resp.read()) == (200, wheel.content)
        async with session.head(url) as resp:
            assert (resp.status, resp.headers["WWW-Authenticate"]) == (401, CHALLENGE)
    assert [(r.method, r.kind, r.status) for r in gl.requests] == [
        ("HEAD", "file", 200),
        ("GET", "file", 200),
        ("HEAD", "unauthorized", 401),
    ]
    assert gl.counts["file"] == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("header", "status", "wanted"),
    [
        ("bytes=0-9", 206, slice(0, 10)),
        ("bytes=100-", 206, slice(100, None)),
        ("bytes=-7", 206, slice(-7, None)),
        ("bytes=5-999999999", 206, slice(5, None)),
        ("bytes=0-0", 206, slice(0, 1)),
        # Not honoured, so the whole file: several ranges, or a last byte before the first.
        ("bytes=0-1,5-6", 200, slice(None)),
        ("bytes=9-2", 200, slice(None)),
        ("items=0-9", 200, slice(None)),
    ],
)
async def test_a_single_byte_range_is_honoured(
    gl: FakeGitLab, header: str, status: int, wanted: slice
) -> None:
    wheel = gl.add_wheel(42, "corp-util", "1.0", payload_size=1000)
    size = len(wheel.content)
    url = gl.url + f"{API}/files/{wheel.sha256}/{wheel.filename}"
    got, headers, body = await fetch(url, {**AUTH, "Range": header})
    assert (got, body) == (status, wheel.content[wanted])
    assert headers["Content-Length"] == str(len(body))
    first, last, _ = wanted.indices(size)
    expected = f"bytes {first}-{last - 1}/{size}" if status == 206 else None
    assert headers.get("Content-Range") == expected
    # HEAD answers the same headers, without the body.
    got, head, body = await fetch(url, {**AUTH, "Range": header}, method="HEAD")
    assert (got, body) == (status, b"")
    assert (head["Content-Length"], head.get("Content-Range")) == (
        headers["Content-Length"],
        expected,
    )


@pytest.mark.parametrize("header", ["bytes=999999-", "bytes=999999-1000000", "bytes=-0"])
async def test_an_unsatisfiable_range_is_416(gl: FakeGitLab, header: str) -> None:
    wheel = gl.add_wheel(42, "corp-util", "1.0")
    url = gl.url + f"{API}/files/{wheel.sha256}/{wheel.filename}"
    status, headers, _ = await fetch(url, {**AUTH, "Range": header})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(wheel.content)}")
    assert gl.counts["file"] == 1


async def test_file_faults_hit_the_range_that_is_sent(gl: FakeGitLab) -> None:
    wheel = gl.add_wheel(42, "corp-util", "1.0", payload_size=300_000)
    url = gl.url + f"{API}/files/{wheel.sha256}/{wheel.filename}"
    middle = len(wheel.content) // 2
    part = {**AUTH, "Range": f"bytes={middle - 10}-{middle + 9}"}
    gl.corrupt_files = True
    status, _, body = await fetch(url, part)
    assert (status, len(body)) == (206, 20)
    assert body[10] == wheel.content[middle] ^ 0xFF
    assert (
        body[:10] + body[11:]
        == wheel.content[middle - 10 : middle] + wheel.content[middle + 1 : middle + 10]
    )
    gl.corrupt_files = False
    gl.truncate_files = True
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(url, {**AUTH, "Range": "bytes=1000-"})
    # HEAD has no body to cut.
    status, headers, _ = await fetch(url, AUTH, method="HEAD")
    assert (status, headers["Content-Length"]) == (200, str(len(wheel.content)))


async def test_object_storage_answers_head_and_ranges_on_urls_signed_for_them(
    gl: FakeGitLab,
) -> None:
    gl.object_storage = True
    wheel = gl.add_wheel(42, "corp-util", "1.0", payload_size=1000)
    url = gl.url + f"{API}/files/{wheel.sha256}/{wheel.filename}"
    status, headers, _ = await fetch(url, AUTH, method="HEAD")
    assert status == 302
    status, head, body = await fetch(headers["Location"], method="HEAD")
    assert (status, head["Content-Length"], head["Accept-Ranges"], body) == (
        200,
        str(len(wheel.content)),
        "bytes",
        b"",
    )
    # As in S3, the signature covers the method: a URL signed for GET refuses a HEAD.
    _, headers, _ = await fetch(url, AUTH)
    signed_for_get = headers["Location"]
    assert (await fetch(signed_for_get, method="HEAD"))[0] == 403
    status, headers, body = await fetch(signed_for_get, {"Range": "bytes=-10"})
    assert (status, body) == (206, wheel.content[-10:])
    size = len(wheel.content)
    assert headers["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"
    status, headers, _ = await fetch(signed_for_get, {"Range": f"bytes={size}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{size}")
    assert [(r.method, r.kind) for r in gl.requests] == [
        ("HEAD", "file"),
        ("HEAD", "object"),
        ("GET", "file"),
        ("HEAD", "object"),
        ("GET", "object"),
        ("GET", "object"),
    ]


@pytest.mark.parametrize("object_storage", [False, True])
async def test_real_uv_talking_to_gitlab_directly_heads_then_reads_a_range(
    gl: FakeGitLab, tmp_path: Path, object_storage: bool
) -> None:
    """uv looks for a wheel's METADATA with HEAD, then a byte range of the zip's end."""
    gl.object_storage = object_storage
    util = gl.add_wheel(42, "corp-util", "1.0", payload_size=200_000)
    app = gl.add_wheel(42, "corp-app", "1.0", requires=["corp-util"], payload_size=200_000)
    index = gl.url.replace("http://", f"http://__token__:{TOKEN}@") + f"{API}/simple"
    uv = Path(sys.executable).parent / "uv"
    requirements = tmp_path / "requirements.in"
    requirements.write_text("corp-app\n")
    options = ["--no-config", "--cache-dir", str(tmp_path / "uv-cache"), "--index-url", index]
    done = await run(
        [str(uv), "pip", "compile", *options, str(requirements)],
        env=clean_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "corp-app==1.0" in done.stdout and "corp-util==1.0" in done.stdout
    for wheel in (app, util):
        asked = [
            (r.method, r.kind, r.status, "Range" in r.headers)
            for r in gl.requests
            if wheel.sha256 in r.path
        ]
        if object_storage:
            # The HEAD follows GitLab's redirect to a URL signed for HEAD. uv does not follow
            # a redirect with its range request: it falls back to the whole file, and for the
            # next wheel (corp-util) it no longer tries.
            if wheel is app:
                head = [("HEAD", "file", 302, False), ("HEAD", "object", 200, False)]
                assert asked[:2] == head
            assert ("GET", "object", 200, False) in asked
        else:
            assert asked[0] == ("HEAD", "file", 200, False)
            # The end of the zip only (its directory and METADATA), never the whole file.
            assert asked[1:] and set(asked[1:]) == {("GET", "file", 206, True)}


async def test_stop_is_idempotent_and_restart_keeps_the_port(gl: FakeGitLab) -> None:
    url = gl.url
    await gl.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(url + API + "/simple/", AUTH)
    await gl.stop()
    await gl.start()
    assert gl.url == url
    assert (await fetch(url + API + "/simple/", AUTH))[0] == 200


# Public index.


async def test_public_index_serves_pep_503_pages_and_files() -> None:
    async with FakePublicIndex() as pub:
        wheel = pub.add_wheel("Six", "1.17.0", requires_python=">=2.7, !=3.0.*")
        status, headers, _ = await fetch(pub.url + "/simple/Six")
        assert (status, headers["Location"]) == (301, "/simple/six/")
        status, _, body = await fetch(pub.url + "/simple/six/", {"Authorization": "Bearer x"})
        page = body.decode()
        assert status == 200
        assert '<meta name="pypi:repository-version" content="1.0">' in page
        sha = wheel.sha256
        link = f"{pub.files_url}/packages/{sha[:2]}/{sha[2:4]}/{sha}/{wheel.filename}"
        metadata = wheel_metadata(wheel.content)
        metadata_sha = hashlib.sha256(metadata).hexdigest()
        assert (
            f'href="{link}#sha256={sha}" data-requires-python="&gt;=2.7, !=3.0.*"'
            f' data-core-metadata="sha256={metadata_sha}">'
        ) in page
        status, _, content = await fetch(link)
        assert (status, content) == (200, wheel.content)
        # PEP 658: the metadata file beside the wheel, as PyPI serves it.
        status, _, content = await fetch(link + ".metadata")
        assert (status, content) == (200, metadata)
        assert (await fetch(pub.url + "/simple/nothing/"))[0] == 404
    assert [r.kind for r in pub.requests] == ["page", "page", "file", "file", "notfound"]
    assert pub.requests[1].headers["Authorization"] == "Bearer x"


async def test_public_index_serves_pep_691_json_to_a_client_that_prefers_it() -> None:
    async with FakePublicIndex() as pub:
        wheel = pub.add_wheel("Six", "1.17.0", upload_time="2024-12-04T10:00:00.123456Z")
        sdist = pub.add_file("six", "1.16.0", "six-1.16.0.tar.gz", b"sdist bytes")
        uv_accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.01"
        status, headers, body = await fetch(pub.url + "/simple/six/", {"Accept": uv_accept})
        assert status == 200
        assert headers["Content-Type"] == "application/vnd.pypi.simple.v1+json"
        assert "Accept" in headers["Vary"]
        page = json.loads(body)
        assert page["meta"]["api-version"] == "1.1"
        assert (page["name"], page["versions"]) == ("six", ["1.16.0", "1.17.0"])
        by_name = {f["filename"]: f for f in page["files"]}
        metadata_sha = hashlib.sha256(wheel_metadata(wheel.content)).hexdigest()
        assert by_name[wheel.filename] == {
            "filename": wheel.filename,
            "url": pub.file_url(wheel).partition("#")[0],
            "hashes": {"sha256": wheel.sha256},
            "requires-python": None,
            "yanked": False,
            "size": len(wheel.content),
            "upload-time": "2024-12-04T10:00:00.123456Z",
            "core-metadata": {"sha256": metadata_sha},
            "dist-info-metadata": {"sha256": metadata_sha},
        }
        # Uploaded when added, unless the test said when; an sdist has no metadata file.
        assert by_name[sdist.filename]["upload-time"].startswith(time.strftime("%Y-"))
        assert by_name[sdist.filename]["core-metadata"] is False
        # HTML unless JSON is preferred, as PyPI decides.
        for accept in ("", "text/html", "application/vnd.pypi.simple.v1+json;q=0.1, text/html"):
            status, headers, _ = await fetch(pub.url + "/simple/six/", {"Accept": accept})
            assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
        pub.offers_json = False
        status, headers, _ = await fetch(pub.url + "/simple/six/", {"Accept": uv_accept})
        assert headers["Content-Type"] == "text/html; charset=utf-8"


async def test_gitlab_answers_html_whatever_the_accept_says(gl: FakeGitLab) -> None:
    gl.add_wheel(42, "corp-util", "1.0.0")
    json_first = {**AUTH, "Accept": "application/vnd.pypi.simple.v1+json"}
    for path in ("/simple/corp-util", "/simple/"):
        status, headers, body = await fetch(gl.url + API + path, json_first)
        assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
        assert body.startswith(b"<!DOCTYPE html>")


# Distributions.


def test_wheel_is_reproducible_with_a_valid_record() -> None:
    filename, content = make_wheel("Corp.Util", "1.0.0", requires=["six>=1"], payload_size=10_000)
    assert filename == "corp_util-1.0.0-py3-none-any.whl"
    assert make_wheel("Corp.Util", "1.0.0", requires=["six>=1"], payload_size=10_000)[1] == content
    assert make_wheel("Corp.Util", "1.0.1")[1] != make_wheel("Corp.Util", "1.0.0")[1]
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        record = archive.read("corp_util-1.0.0.dist-info/RECORD").decode().splitlines()
        for line in record:
            path, digest, size = line.rsplit(",", 2)
            if path.endswith("RECORD"):
                continue
            data = archive.read(path)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert (digest, int(size)) == (f"sha256={expected.decode()}", len(data))
        assert len(archive.read("corp_util/payload.bin")) == 10_000
    metadata = wheel_metadata(content).decode()
    assert "Name: Corp.Util\n" in metadata and "Requires-Dist: six>=1\n" in metadata


def test_sdist_is_a_well_formed_tarball() -> None:
    filename, content = make_sdist("Corp.Util", "2.0rc1", requires_python=">=3.9")
    assert filename == "corp_util-2.0rc1.tar.gz"
    assert make_sdist("Corp.Util", "2.0rc1", requires_python=">=3.9")[1] == content
    with tarfile.open(fileobj=io.BytesIO(content)) as archive:
        pkg_info = archive.extractfile("corp_util-2.0rc1/PKG-INFO")
        assert pkg_info is not None
        assert b"Requires-Python: >=3.9\n" in pkg_info.read()
        assert "corp_util-2.0rc1/pyproject.toml" in archive.getnames()


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_made_wheel_installs_with_real_installers(tmp_path: Path, installer: str) -> None:
    filename, content = make_wheel("Corp.Util", "1.2.0", requires_python=">=3.8", payload_size=1000)
    wheel = tmp_path / filename
    wheel.write_bytes(content)
    target = tmp_path / "target"
    if installer == "pip":
        command = [sys.executable, "-m", "pip", "install", "--isolated", "--no-index"]
    else:
        uv = Path(sys.executable).parent / "uv"
        command = [
            str(uv),
            "pip",
            "install",
            "--no-config",
            "--no-cache",
            "--no-index",
            "--python",
            sys.executable,
        ]
    subprocess.run(
        [*command, "--target", str(target), str(wheel)],
        env=clean_env(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    check = [sys.executable, "-c", "import corp_util; print(corp_util.__version__)"]
    done = subprocess.run(
        check,
        env={**clean_env(), "PYTHONPATH": str(target)},
        check=True,
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == "1.2.0"
    assert (target / "corp_util-1.2.0.dist-info" / "METADATA").read_bytes() == wheel_metadata(
        content
    )
