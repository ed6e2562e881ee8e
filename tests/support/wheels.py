"""Builds real, installable wheels and well-formed sdists in memory, byte-for-byte reproducibly."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import random
import re
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from packaging.tags import parse_tag
from packaging.version import Version

# Zip timestamps cannot predate 1980; a fixed one makes equal inputs give equal sha256.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# 2020-01-01T00:00:00Z, for tar members and the gzip header.
_TAR_MTIME = 1577836800


class SdistOptions(TypedDict, total=False):
    """`make_sdist`'s keyword arguments, for the fakes that pass them on."""

    requires: Sequence[str]
    requires_python: str | None


class WheelOptions(SdistOptions, total=False):
    """`make_wheel`'s keyword arguments, for the fakes that pass them on."""

    tag: str
    payload_size: int


def _escaped(name: str) -> str:
    """The distribution name as wheel and sdist filenames spell it (PEP 427, PEP 625)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _metadata(
    name: str, version: str, requires: Sequence[str], requires_python: str | None
) -> bytes:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: Test distribution {name} {version}",
    ]
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    return ("\n".join(lines) + "\n").encode()


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    requires_python: str | None = None,
    tag: str = "py3-none-any",
    payload_size: int = 0,
) -> tuple[str, bytes]:
    """(filename, bytes) of a wheel that pip and uv install; `payload_size` pads it with data."""
    version = str(Version(version))  # pip rejects a wheel whose filename and METADATA disagree
    dist = _escaped(name)
    dist_info = f"{dist}-{version}.dist-info"
    # A compressed tag set (py2.py3-none-any) stands for several tags; WHEEL lists each one.
    tags = sorted(str(t) for t in parse_tag(tag))
    pure = all(t.endswith("-none-any") for t in tags)
    wheel_file = [
        "Wheel-Version: 1.0",
        "Generator: tests.support.wheels",
        f"Root-Is-Purelib: {'true' if pure else 'false'}",
        *(f"Tag: {t}" for t in tags),
    ]
    files: list[tuple[str, bytes]] = [
        (f"{dist}/__init__.py", f'__version__ = "{version}"\n'.encode())
    ]
    if payload_size:
        seeded = random.Random(f"{name}=={version}")
        files.append((f"{dist}/payload.bin", seeded.randbytes(payload_size)))
    files += [
        (f"{dist_info}/METADATA", _metadata(name, version, requires, requires_python)),
        (f"{dist_info}/WHEEL", ("\n".join(wheel_file) + "\n").encode()),
    ]
    record = [_record_line(path, data) for path, data in files] + [f"{dist_info}/RECORD,,"]
    files.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files:
            info = zipfile.ZipInfo(path, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            # Random payload does not shrink; deflating megabytes of it only costs time.
            is_payload = path.endswith("payload.bin")
            info.compress_type = zipfile.ZIP_STORED if is_payload else zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return f"{dist}-{version}-{tag}.whl", buffer.getvalue()


def make_sdist(
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    requires_python: str | None = None,
) -> tuple[str, bytes]:
    """(filename, bytes) of a .tar.gz sdist with PKG-INFO and a setuptools pyproject.toml."""
    version = str(Version(version))
    dist = _escaped(name)
    root = f"{dist}-{version}"
    dependencies = ", ".join(f'"{requirement}"' for requirement in requires)
    pyproject = [
        "[build-system]",
        'requires = ["setuptools>=68"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f'name = "{name}"',
        f'version = "{version}"',
        f"dependencies = [{dependencies}]",
    ]
    if requires_python is not None:
        pyproject.append(f'requires-python = "{requires_python}"')
    members = [
        (f"{root}/PKG-INFO", _metadata(name, version, requires, requires_python)),
        (f"{root}/pyproject.toml", ("\n".join(pyproject) + "\n").encode()),
        (f"{root}/{dist}/__init__.py", f'__version__ = "{version}"\n'.encode()),
    ]

    buffer = io.BytesIO()
    # mtime=0 keeps the current time out of the gzip header.
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for path, data in members:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return f"{root}.tar.gz", buffer.getvalue()


def wheel_metadata(wheel_bytes: bytes) -> bytes:
    """The bytes of the wheel's top-level `*.dist-info/METADATA` (what PEP 658 serves)."""
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as archive:
        for path in archive.namelist():
            top, _, rest = path.partition("/")
            if top.endswith(".dist-info") and rest == "METADATA":
                return archive.read(path)
    raise ValueError("wheel has no .dist-info/METADATA")


def zipped(tmp_path: Path, members: dict[str, bytes]) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path = tmp_path / "wheel.whl"
    path.write_bytes(buffer.getvalue())
    return path
