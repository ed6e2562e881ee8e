"""Bundle manifests: version 1 from a40a93d imports, and so does one with a later release's keys."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from proxy.bundle import MANIFEST, BundleError, import_bundle
from tests.support.harness import make_settings

A40A93D = Path(__file__).parent.parent / "data" / "a40a93d" / "bundle.tar.gz"


def rewritten(out: Path, change: Any) -> Path:
    """The a40a93d bundle with its manifest passed through `change`."""
    with tarfile.open(A40A93D) as old, tarfile.open(out, "w") as new:
        for member in old:
            data = old.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == MANIFEST:
                data = json.dumps(change(json.loads(data))).encode()
                member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    return out


def with_future_keys(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["signature"] = "a later release's"
    for key in ("created", "scopes", "forwarded"):
        del manifest[key]
    for section in ("blobs", "pages"):
        for entry in manifest[section]:
            entry["origin"] = "online side"
    return manifest


async def test_a_version_1_bundle_imports(tmp_path: Path) -> None:
    result = await import_bundle(make_settings("https://gitlab.invalid", tmp_path, ""), A40A93D)
    assert (result.added, result.pages) == (3, 4)


async def test_a_bundle_with_keys_of_a_later_release_imports(tmp_path: Path) -> None:
    bundle = rewritten(tmp_path / "future.tar", with_future_keys)
    settings = make_settings("https://gitlab.invalid", tmp_path / "cache", "")
    result = await import_bundle(settings, bundle)
    assert (result.added, result.pages, result.forwarded) == (3, 4, 0)


@pytest.mark.parametrize("version", [0, 2, "1", True])
async def test_a_bundle_of_an_unknown_version_is_refused(tmp_path: Path, version: object) -> None:
    bundle = rewritten(tmp_path / "other.tar", lambda manifest: {**manifest, "version": version})
    settings = make_settings("https://gitlab.invalid", tmp_path / "cache", "")
    with pytest.raises(BundleError, match="not a version 1"):
        await import_bundle(settings, bundle)
