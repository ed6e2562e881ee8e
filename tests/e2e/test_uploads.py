"""Issue 3, uploads: real twine and real `uv publish` through the proxy to the fake GitLab."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import requests
from twine.commands.upload import skip_upload

from tests.support.cli_process import serve
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import (
    BIN,
    TOKEN,
    Completed,
    ProxyFactory,
    RunningProxy,
    clean_env,
    pip_install,
    run,
    twine,
)
from tests.support.http import PROJECT, basic, fetch_as_written, post_as_is
from tests.support.multipart import GOOD, GOOD_TYPE, multipart
from tests.support.polling import eventually
from tests.support.wheels import make_sdist, make_wheel

UPLOAD = "/api/v4/projects/42/packages/pypi"
WRITER = "glpat-writer-0123456789"


def dist_dir(tmp_path: Path, *files: tuple[str, bytes]) -> list[Path]:
    folder = tmp_path / "dist"
    folder.mkdir(exist_ok=True)
    paths = []
    for filename, content in files:
        path = folder / filename
        path.write_bytes(content)
        paths.append(path)
    return paths


async def uv_publish(url: str, password: str, *args: str | Path) -> Completed:
    return await run(
        [
            str(BIN / "uv"),
            "publish",
            "--no-config",
            "--publish-url",
            url,
            "--username",
            "someone",
            "--password",
            password,
            *map(str, args),
        ],
        env=clean_env(),
    )


def uploads(gitlab: FakeGitLab) -> list[int]:
    return [r.status for r in gitlab.requests if r.method == "POST"]


async def test_twine_and_uv_publish_then_pip_sees_each_new_version_at_once(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    url = proxy.url + UPLOAD
    wheel, sdist = dist_dir(
        tmp_path, make_wheel("corp-util", "1.0.0"), make_sdist("corp-util", "1.0.0")
    )
    (await twine(url, TOKEN, wheel, sdist)).check()
    assert uploads(gitlab) == [201, 201]
    # Every upstream upload carried the client's credentials, not the proxy's.
    assert {r.headers["Authorization"] for r in gitlab.requests} == {basic(TOKEN)}

    (await pip_install(proxy.index_url("projects/42"), tmp_path / "one", "corp-util")).check()
    assert (tmp_path / "one" / "corp_util-1.0.0.dist-info").is_dir()
    # The group page and the index are cached now too, with only 1.0.0 on them.
    async with aiohttp.ClientSession() as session:
        for path in [
            "groups/7/-/packages/pypi/simple/corp-util/",
            "groups/7/-/packages/pypi/simple/",
        ]:
            async with session.get(f"{proxy.url}/api/v4/{path}") as resp:
                assert resp.status == 200

        new_wheel = dist_dir(tmp_path, make_wheel("corp-util", "1.1.0"))[0]
        (await uv_publish(url, TOKEN, new_wheel)).check()
        assert uploads(gitlab) == [201, 201, 201]

        (await pip_install(proxy.index_url("groups/7"), tmp_path / "two", "corp-util")).check()
        assert (tmp_path / "two" / "corp_util-1.1.0.dist-info").is_dir()
        async with session.get(f"{proxy.url}/api/v4/projects/42/packages/pypi/simple/") as resp:
            assert resp.headers["X-Cache"] == "MISS"
        # The sdist went through byte for byte and comes back verified.
        page_url = f"{proxy.url}/api/v4/projects/42/packages/pypi/simple/corp-util/"
        async with session.get(page_url) as resp:
            page = await resp.text()
        assert "corp_util-1.1.0-py3-none-any.whl" in page
        sdist_sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
        file_url = f"{proxy.url}{UPLOAD}/files/{sdist_sha}/{sdist.name}"
        async with session.get(file_url) as resp:
            assert resp.status == 200
            assert await resp.read() == sdist.read_bytes()


async def test_duplicates_become_409_and_what_each_client_makes_of_it(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    wheel = dist_dir(tmp_path, make_wheel("corp-util", "1.0.0"))[0]
    (await twine(proxy.url + UPLOAD, TOKEN, wheel)).check()

    # Against GitLab itself the duplicate is a 400 no client recognises.
    direct = await twine(gitlab.url + UPLOAD, TOKEN, wheel)
    assert direct.returncode == 1
    assert "400 Bad Request" in direct.stdout + direct.stderr

    # Through the proxy it is a 409. twine 7 still fails without --skip-existing...
    again = await twine(proxy.url + UPLOAD, TOKEN, wheel)
    assert again.returncode == 1
    assert "409 Conflict" in again.stdout + again.stderr
    # ...and refuses --skip-existing for any URL but PyPI's, before sending anything.
    before = len(gitlab.requests)
    skipped = await twine(proxy.url + UPLOAD, TOKEN, "--skip-existing", wheel)
    assert skipped.returncode == 1
    assert "UnsupportedConfiguration" in skipped.stdout + skipped.stderr
    assert len(gitlab.requests) == before

    # twine's own skip test, which twine < 6.2 ran for any index with --skip-existing, reads
    # the proxy's 409 as "already exists"; GitLab's 400 it does not.
    def post(base: str) -> requests.Response:
        # requests blocks, and the servers live on this thread's event loop.
        return requests.post(
            base + UPLOAD,
            files={"content": (wheel.name, wheel.read_bytes())},
            data={"name": "corp-util", "version": "1.0.0"},
            auth=("someone", TOKEN),
            timeout=30,
        )

    proxied = await asyncio.to_thread(post, proxy.url)
    straight = await asyncio.to_thread(post, gitlab.url)
    assert (proxied.status_code, straight.status_code) == (409, 400)
    assert skip_upload(proxied, True, None)  # type: ignore[arg-type]
    assert not skip_upload(straight, True, None)  # type: ignore[arg-type]

    # uv publish fails on the 409 too, but with --check-url through the proxy it skips.
    plain = await uv_publish(proxy.url + UPLOAD, TOKEN, wheel)
    assert plain.returncode != 0
    assert "409 Conflict" in plain.stderr
    checked = await uv_publish(
        proxy.url + UPLOAD, TOKEN, "--check-url", proxy.index_url("projects/42"), wheel
    )
    checked.check()
    assert "already exists" in checked.stderr
    assert [s for s in uploads(gitlab) if s == 201] == [201]


async def test_wrong_credentials_get_gitlabs_own_status(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    gitlab.tokens["glpat-reader"] = None
    gitlab.read_only_tokens.add("glpat-reader")
    wheel = dist_dir(tmp_path, make_wheel("corp-util", "1.0.0"))[0]
    unknown = await twine(proxy.url + UPLOAD, "glpat-nobody", wheel)
    assert unknown.returncode == 1
    assert "401 Unauthorized" in unknown.stdout + unknown.stderr
    reader = await uv_publish(proxy.url + UPLOAD, "glpat-reader", wheel)
    assert reader.returncode != 0
    assert "403 Forbidden" in reader.stderr
    assert uploads(gitlab) == [401, 403]
    assert not gitlab.find_file(hashlib.sha256(wheel.read_bytes()).hexdigest(), wheel.name, None)


async def test_upload_over_the_limit_is_413_before_gitlab_hears_of_it(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy(upstream={"max_upload_size": 4096})
    wheel = dist_dir(tmp_path, make_wheel("corp-util", "1.0.0", payload_size=20_000))[0]
    by_twine = await twine(proxy.url + UPLOAD, TOKEN, wheel)
    assert by_twine.returncode == 1
    assert "413" in by_twine.stdout + by_twine.stderr
    by_uv = await uv_publish(proxy.url + UPLOAD, TOKEN, wheel)
    assert by_uv.returncode != 0
    assert "413" in by_uv.stderr
    assert gitlab.requests == []

    # Chunked, so no Content-Length to judge by: counted as it streams, GitLab's request cut.
    async def chunked() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\ncorp-util\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="version"\r\n\r\n1.0\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="content"; filename="c-1.0.tar.gz"'
        yield b"\r\n\r\n"
        for _ in range(10):
            yield b"x" * 1000
        yield b"\r\n--b--\r\n"

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proxy.url + UPLOAD,
            data=chunked(),
            headers={
                "Content-Type": "multipart/form-data; boundary=b",
                "Authorization": basic(TOKEN),
            },
        ) as resp,
    ):
        assert resp.status == 413
        assert "4096 bytes" in (await resp.json())["message"]
    assert 201 not in uploads(gitlab)
    assert gitlab.find_file("", "c-1.0.tar.gz", None) is None


@pytest.mark.parametrize(
    ("content_type", "body", "why"),
    [
        ("application/json", b"{}", "multipart/form-data"),
        ("multipart/form-data", GOOD, "boundary"),
        ("multipart/form-data; boundary=xyz", b"no boundary here at all", "closing boundary"),
        ("multipart/form-data; boundary=xyz", GOOD[:-20], "closing boundary"),
        ("multipart/form-data; boundary=xyz", GOOD.replace(b"\r\n", b"\n"), "malformed"),
        (
            "multipart/form-data; boundary=xyz",
            b"--xyz\r\nX-Nothing: here\r\n\r\nvalue\r\n--xyz--\r\n",
            "form-data name",
        ),
        (
            "multipart/form-data; boundary=xyz",
            multipart(("version", None, b"1.0.0"), ("content", "c-1.0.tar.gz", b"zz")),
            "name is missing",
        ),
        (
            "multipart/form-data; boundary=xyz",
            multipart(("name", None, b"corp-util"), ("content", "c-1.0.tar.gz", b"zz")),
            "version is missing",
        ),
        (
            "multipart/form-data; boundary=xyz",
            multipart(("name", None, b"corp-util"), ("version", None, b"1.0")),
            "content is missing",
        ),
        (
            "multipart/form-data; boundary=xyz",
            multipart(("name", None, b"\xff\xfe"), ("version", None, b"1.0")),
            "not UTF-8",
        ),
    ],
)
async def test_bad_upload_bodies_are_a_clear_400_and_store_nothing(
    gitlab: FakeGitLab, proxy: RunningProxy, content_type: str, body: bytes, why: str
) -> None:
    status, answer_type, answer = await post_as_is(
        proxy.url + UPLOAD, body, content_type, basic(TOKEN)
    )
    assert (status, answer_type) == (400, "application/json")
    assert why in json.loads(answer)["message"]
    # GitLab either never heard of it or had its request cut before the closing boundary.
    assert 201 not in uploads(gitlab)
    assert 400 not in uploads(gitlab) or why == "closing boundary"
    assert gitlab.find_file(hashlib.sha256(b"zz").hexdigest(), "c-1.0.tar.gz", None) is None


async def test_good_handmade_body_is_accepted(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    """The bodies above fail for the reason named, not because the proxy refuses all of them."""
    status, _, answer = await post_as_is(proxy.url + UPLOAD, GOOD, GOOD_TYPE, basic(TOKEN))
    assert status == 201, answer
    assert uploads(gitlab) == [201]


async def test_client_gone_mid_upload_is_never_a_success(
    gitlab: FakeGitLab, proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    head = (
        f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: {basic(TOKEN)}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {len(GOOD) + 100_000}\r\n\r\n"
    ).encode()
    host, port = proxy.url.removeprefix("http://").split(":")
    with caplog.at_level(logging.INFO):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(head)
        # Piece by piece, until GitLab has the half-sent request open; then vanish.
        for piece in (GOOD[i : i + 64] for i in range(0, len(GOOD) // 2, 64)):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
            if uploads(gitlab):
                break
        assert uploads(gitlab) == [0], "GitLab should have the upload open, unanswered"
        writer.transport.abort()
        await eventually(lambda: "went away" in caplog.text, "the hang-up logged", interval=0.01)
    assert "went away" in caplog.text
    assert "201" not in caplog.text
    assert 201 not in uploads(gitlab)
    assert (
        gitlab.find_file(
            hashlib.sha256(b"\x1f\x8b" + b"z" * 500).hexdigest(), "corp_util-1.0.0.tar.gz", None
        )
        is None
    )


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("Basic " + base64.b64encode(b"glpat-no-colon-secret").decode(), "no colon"),
        ("Basic " + base64.b64encode(b"someone:\xffglpat-\xfesecret").decode(), "UTF-8"),
        ("Basic glpat-not-base64-secret!!", "base64"),
        ("Basic " + base64.b64encode(b"someone:glpat-" + b"s" * 5000).decode(), "longer"),
        ("Digest glpat-digest-secret", "scheme"),
    ],
)
async def test_odd_credentials_are_a_clear_400_and_never_logged(
    gitlab: FakeGitLab,
    proxy: RunningProxy,
    caplog: pytest.LogCaptureFixture,
    header: str,
    why: str,
) -> None:
    with caplog.at_level(logging.DEBUG):
        status, _, body = await post_as_is(proxy.url + UPLOAD, GOOD, GOOD_TYPE, header)
        assert status == 400
    assert why in body
    assert gitlab.requests == []
    secret = header.partition(" ")[2]
    for leaked in (secret, "glpat-", "secret"):
        assert leaked not in caplog.text
        assert leaked not in body


async def test_header_too_long_for_the_server_is_a_400_and_never_logged(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """aiohttp itself refuses a header over 8190 bytes, and quotes its start in its error log."""
    secret = "glpat-" + "q" * 9000
    quoted = base64.b64encode(f"someone:{secret}".encode()).decode()[:24]
    # One process: a worker sets up the same redacting log as a lone process does.
    async with await serve(tmp_path, upstream_url=gitlab.url, server_workers="1") as served:
        host, port = served.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET {UPLOAD}/simple/ HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {basic(secret)}\r\n\r\n".encode()
        )
        answer = await reader.read(65536)
        writer.close()
    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    log = served.log()
    assert "Got more than 8190 bytes" in log
    assert quoted not in log
    assert "qqqq" not in log
    assert gitlab.requests == []


async def test_inject_upload_credentials_use_the_proxys_token(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy(upstream={"upload_credentials": "inject"})
    wheel = dist_dir(tmp_path, make_wheel("corp-util", "1.0.0"))[0]
    (await twine(proxy.url + UPLOAD, "whatever-the-client-says", wheel)).check()
    assert uploads(gitlab) == [201]
    proxy_auth = "Basic " + base64.b64encode(f"proxy:{TOKEN}".encode()).decode()
    assert gitlab.requests[-1].headers["Authorization"] == proxy_auth


@pytest.mark.parametrize(("length", "expected"), [(10_000_000, b" 413 "), (len(GOOD), b" 100 ")])
async def test_expect_100_continue_is_refused_or_granted_before_the_body(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, length: int, expected: bytes
) -> None:
    proxy = await make_proxy(upstream={"max_upload_size": 4096})
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: {basic(TOKEN)}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n"
            f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
    )
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert expected in status_line
    if expected == b" 100 ":
        await reader.readline()
        writer.write(GOOD)
        while (line := await reader.readline()) == b"\r\n":
            pass
        assert b" 201 " in line
    writer.close()
    assert uploads(gitlab) == ([201] if expected == b" 100 " else [])


# Digests: GitLab stores `sha256_digest` as sent and never checks it.

BIG = b"\x1f\x8b" + bytes(range(256)) * 4096  # 1 MiB: the body streams in many chunks


@pytest.mark.parametrize("field", ["sha256_digest", "md5_digest"])
async def test_a_wrong_digest_is_a_400_and_gitlab_stores_nothing(
    gitlab: FakeGitLab, proxy: RunningProxy, field: str
) -> None:
    wrong = "0" * (64 if field == "sha256_digest" else 32)
    # As twine orders it: the digests before the file.
    body = multipart(
        ("name", None, b"corp-util"),
        ("version", None, b"1.0.0"),
        (field, None, wrong.encode()),
        ("content", "corp_util-1.0.0.tar.gz", BIG),
    )
    status, _, answer = await post_as_is(proxy.url + UPLOAD, body, GOOD_TYPE, basic(TOKEN))
    assert status == 400
    message = json.loads(answer)["message"]
    assert f"{field} {wrong} does not match the uploaded file" in message
    # GitLab's request was cut before its closing boundary: nothing stored under any digest.
    assert 201 not in uploads(gitlab)
    real = hashlib.sha256(BIG).hexdigest()
    assert gitlab.find_file(real, "corp_util-1.0.0.tar.gz", None) is None
    assert gitlab.find_file(wrong, "corp_util-1.0.0.tar.gz", None) is None
    status, _, _ = await post_as_is(proxy.url + UPLOAD, GOOD, GOOD_TYPE, basic(TOKEN))
    assert status == 201, "the refusal was about the digest, not the upload"


async def test_an_upload_without_a_digest_can_be_downloaded_by_its_hash(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    body = multipart(
        ("name", None, b"corp-util"),
        ("version", None, b"1.0.0"),
        ("content", "corp_util-1.0.0.tar.gz", BIG),
    )
    status, _, answer = await post_as_is(proxy.url + UPLOAD, body, GOOD_TYPE, basic(TOKEN))
    assert status == 201, answer
    real = hashlib.sha256(BIG).hexdigest()
    # The proxy added the digest it computed; without it GitLab would have stored NULL.
    assert gitlab.find_file(real, "corp_util-1.0.0.tar.gz", {42}) is not None
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.url}{UPLOAD}/simple/corp-util/") as resp:
            assert f"files/{real}/corp_util-1.0.0.tar.gz" in await resp.text()
        async with session.get(f"{proxy.url}{UPLOAD}/files/{real}/corp_util-1.0.0.tar.gz") as resp:
            assert (resp.status, await resp.read()) == (200, BIG)


async def test_twine_uploads_keep_their_digest_and_verify(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    """twine's own right digest passes, and GitLab stores that same one."""
    filename, content = make_wheel("corp-util", "1.0.0")
    (await twine(proxy.url + UPLOAD, TOKEN, *dist_dir(tmp_path, (filename, content)))).check()
    stored = gitlab.find_file(hashlib.sha256(content).hexdigest(), filename, {42})
    assert stored is not None and stored.content == content


async def test_an_upload_forgets_a_remembered_404_for_its_name(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    """Else installs right after `uv publish --check-url` see 404 (or PyPI) for negative_ttl."""
    gitlab.forwarding = False
    page = f"{proxy.url}{PROJECT}/simple/corp-util/"
    assert (await fetch_as_written(page))[0] == 404
    status, _, text = await post_as_is(proxy.url + UPLOAD, GOOD, GOOD_TYPE, basic(TOKEN))
    assert status == 201, text
    status, _, body = await fetch_as_written(page)
    assert status == 200
    assert b"corp_util-1.0.0.tar.gz" in body


async def test_uploads_never_reach_gitlab_when_offline(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(cache={"offline": True})
    status, _, text = await post_as_is(proxy.url + UPLOAD, GOOD, GOOD_TYPE, basic(TOKEN))
    assert status == 503
    assert "offline" in text
    assert gitlab.requests == []
