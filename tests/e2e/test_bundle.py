"""Bundles: export and import merge idempotently; a damaged or hostile bundle changes nothing."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
import tarfile
from pathlib import Path

import pytest

from proxy.bundle import MANIFEST, BundleError, export_bundle, import_bundle
from proxy.config import Settings
from proxy.scope import Scope
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, ProxyFactory, clean_env, make_settings, run
from tests.support.http import PROJECT, PROJECT_PAGE, cached_wheel, fetch_as_written, get

FILES = "/api/v4/projects/42/packages/pypi/files"


async def warmed_bundle(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path, names: list[str]
) -> Path:
    """A cache holding one wheel of each of `names` and its page, exported to a bundle."""
    cache = tmp_path / f"source-{'-'.join(names)}"
    proxy = await make_proxy(cache_dir=cache)
    for name in names:
        wheel = gitlab.add_wheel(42, name, "1.0")
        assert (await get(f"{proxy.url}{PROJECT_PAGE}{name}/"))[0] == 200
        assert (await get(f"{proxy.url}{FILES}/{wheel.sha256}/{wheel.filename}"))[0] == 200
    await proxy.stop()
    out = tmp_path / f"{'-'.join(names)}.tar"
    result = await export_bundle(proxy.settings, [Scope("projects", "42")], out)
    assert (result.pages, result.blobs, result.missing) == (len(names), len(names), 0)
    return out


def target_settings(cache: Path, **upstream: object) -> Settings:
    """The air-gapped side: a cache directory, and a GitLab it will never reach."""
    return make_settings("https://gitlab.invalid", cache, "", upstream=upstream)


def snapshot(cache: Path) -> tuple[dict[str, bytes], list[tuple[object, ...]]]:
    """Every file of the cache but SQLite's own, and every row SQLite holds."""
    files = {
        str(p.relative_to(cache)): p.read_bytes()
        for p in sorted(cache.rglob("*"))
        if p.is_file() and not p.name.startswith("index.sqlite3")
    }
    with sqlite3.connect(cache / "index.sqlite3") as db:
        rows = [
            (table, *row)
            for table in ("blobs", "pages", "forwarded_files")
            for row in db.execute(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608 - fixed names
        ]
    return files, rows


def rewrite(source: Path, out: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A tar with the source's members, then `members` appended as given."""
    with tarfile.open(source) as tar, tarfile.open(out, "w") as new:
        for member in tar:
            file = tar.extractfile(member)
            new.addfile(member, file)
        for info, data in members:
            new.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


async def test_import_into_an_empty_cache_then_again_is_idempotent(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    bundle = await warmed_bundle(gitlab, make_proxy, tmp_path, ["corp-util", "corp-app"])
    target = target_settings(tmp_path / "target")
    first = await import_bundle(target, bundle)
    assert (first.added, first.present, first.pages) == (2, 0, 2)
    before = snapshot(tmp_path / "target")
    second = await import_bundle(target, bundle)
    assert (second.added, second.present) == (0, 2)
    assert snapshot(tmp_path / "target") == before
    assert not list((tmp_path / "target").glob("import-*")), "staging left behind"


async def test_import_merges_into_a_cache_that_has_other_things(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    one = await warmed_bundle(gitlab, make_proxy, tmp_path, ["corp-util"])
    two = await warmed_bundle(gitlab, make_proxy, tmp_path, ["corp-app"])
    target = target_settings(tmp_path / "target")
    await import_bundle(target, one)
    result = await import_bundle(target, two)
    assert (result.added, result.present) == (1, 0)
    files, rows = snapshot(tmp_path / "target")
    assert len([f for f in files if f.startswith("blobs/")]) == 2
    assert len([r for r in rows if r[0] == "pages"]) == 2


def flip_a_blob_byte(bundle: Path) -> None:
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar if m.name.startswith("blobs/"))
    data = bytearray(bundle.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF
    bundle.write_bytes(bytes(data))


def truncate(bundle: Path) -> None:
    with tarfile.open(bundle) as tar:
        last = [m for m in tar if m.name.startswith("blobs/")][-1]
    bundle.write_bytes(bundle.read_bytes()[: last.offset_data + last.size // 2])


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    return info


HOSTILE = {
    "traversal": (member("../evil"), "path traversal"),
    "absolute": (member("/tmp/evil"), "path traversal"),
    "symlink": (member("blobs/" + "a" * 64, tarfile.SYMTYPE), "symbolic link"),
    "hardlink": (member("blobs/" + "b" * 64, tarfile.LNKTYPE), "hard link"),
    "device": (member("dev", tarfile.CHRTYPE), "character device"),
    "unlisted": (member("blobs/" + "c" * 64), "not listed in the manifest"),
}


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", *HOSTILE])
async def test_a_damaged_or_hostile_bundle_is_refused_and_the_cache_is_unchanged(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path, damage: str
) -> None:
    existing = await warmed_bundle(gitlab, make_proxy, tmp_path, ["corp-util"])
    bundle = await warmed_bundle(gitlab, make_proxy, tmp_path, ["corp-app", "corp-lib"])
    target = target_settings(tmp_path / "target")
    await import_bundle(target, existing)
    before = snapshot(tmp_path / "target")

    if damage == "flipped byte":
        flip_a_blob_byte(bundle)
        expected = "sha256 does not match"
    elif damage == "truncated":
        truncate(bundle)
        expected = "truncated"
    else:
        info, expected = HOSTILE[damage]
        data = b"x" if info.isreg() else None
        bundle = rewrite(bundle, tmp_path / "hostile.tar", [(info, data)])

    with pytest.raises(BundleError, match=expected):
        await import_bundle(target, bundle)
    assert snapshot(tmp_path / "target") == before
    assert not list((tmp_path / "target").glob("import-*")), "staging left behind"
    assert not (tmp_path / "evil").exists()


def edit_manifest(bundle: Path, out: Path, edit: object) -> Path:
    """The same bundle with its manifest changed by `edit(manifest)`."""
    with tarfile.open(bundle) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    manifest = json.loads(members[0][1])
    edit(manifest)  # type: ignore[operator]
    body = json.dumps(manifest).encode()
    members[0][0].size = len(body)
    members[0] = (members[0][0], body)
    with tarfile.open(out, "w") as new:
        for info, data in members:
            new.addfile(info, io.BytesIO(data))
    return out


async def test_page_models_in_a_bundle_are_validated(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    bundle = await warmed_bundle(gitlab, make_proxy, tmp_path, ["corp-util"])

    def bad_filename(manifest: dict[str, list[dict[str, dict[str, object]]]]) -> None:
        manifest["pages"][0]["model"]["model"]["files"][0]["filename"] = "../../etc/passwd"  # type: ignore[index]

    hostile = edit_manifest(bundle, tmp_path / "hostile.tar", bad_filename)
    target = target_settings(tmp_path / "target")
    with pytest.raises(BundleError, match="not a valid page model"):
        await import_bundle(target, hostile)
    assert not (tmp_path / "target" / "blobs").exists() or not list(
        (tmp_path / "target" / "blobs").rglob("*.whl")
    )


async def test_forwarded_sources_are_kept_only_for_hosts_listed_here(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    bundle = await warmed_bundle(gitlab, make_proxy, tmp_path, ["corp-util"])
    with tarfile.open(bundle) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    sha = manifest["blobs"][0]["sha256"]
    filename = manifest["blobs"][0]["filename"]

    def add_sources(manifest: dict[str, list[dict[str, str]]]) -> None:
        for host in ("files.example", "evil.example"):
            manifest["forwarded"].append(
                {
                    "scope": "projects/42",
                    "sha256": sha,
                    "filename": filename,
                    "url": f"https://{host}/{filename}",
                }
            )

    edited = edit_manifest(bundle, tmp_path / "edited.tar", add_sources)
    target = target_settings(tmp_path / "target", forward_hosts=("files.example",))
    result = await import_bundle(target, edited)
    assert (result.forwarded, result.dropped) == (1, 1)
    _, rows = snapshot(tmp_path / "target")
    sources = [r for r in rows if r[0] == "forwarded_files"]
    assert [r[-1] for r in sources] == [f"https://files.example/{filename}"]


async def test_import_command_refuses_with_a_clear_message(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    bundle = await warmed_bundle(gitlab, make_proxy, tmp_path, ["corp-util"])
    flip_a_blob_byte(bundle)
    env = clean_env(GITLAB_PYPI_PROXY_CACHE_DIR=str(tmp_path / "target"))
    result = await run([sys.executable, "-m", "proxy", "import", str(bundle)], env=env)
    assert result.returncode == 1
    assert "import refused" in result.stderr
    assert "corp_util-1.0-py3-none-any.whl is damaged" in result.stderr
    assert "the cache is unchanged" in result.stderr
    assert TOKEN not in result.stderr

    not_a_bundle = tmp_path / "notes.txt"
    not_a_bundle.write_text("hello")
    result = await run([sys.executable, "-m", "proxy", "import", str(not_a_bundle)], env=env)
    assert result.returncode == 1
    assert "not a readable tar bundle" in result.stderr


async def test_metadata_asked_under_another_name_does_not_poison_the_real_wheels(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """An imported (air-gapped) cache learns each wheel's metadata on its first request."""
    source = await make_proxy(cache_dir=tmp_path / "online")
    url, sha256 = await cached_wheel(gitlab, source)
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
