"""Reading a wheel's METADATA for PEP 658: the right file, or a clear reason why there is none."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from proxy.metadata import MAX_METADATA_BYTES, WheelMetadataError, read_wheel_metadata
from tests.support.wheels import make_wheel, wheel_metadata, zipped

FILENAME = "corp_util-1.0.0-py3-none-any.whl"


def test_reads_the_metadata_of_a_real_wheel(tmp_path: Path) -> None:
    filename, content = make_wheel("Corp.Util", "1.0", requires=["six>=1"], requires_python=">=3")
    path = tmp_path / filename
    path.write_bytes(content)
    metadata = read_wheel_metadata(path, filename)
    assert metadata == wheel_metadata(content)
    assert b"Requires-Dist: six>=1" in metadata


@pytest.mark.parametrize(
    "dist_info",
    [
        "corp_util-1.0.0.dist-info",
        # Names and versions compare normalized, as installers compare them.
        "Corp.Util-1.0.dist-info",
        "corp-util-1.0.0.dist-info",
    ],
)
def test_dist_info_may_spell_name_and_version_differently(tmp_path: Path, dist_info: str) -> None:
    path = zipped(tmp_path, {f"{dist_info}/METADATA": b"Name: corp-util\n", "corp_util/x.py": b""})
    assert read_wheel_metadata(path, FILENAME) == b"Name: corp-util\n"


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"corp_util/__init__.py": b""}, "no .dist-info directory"),
        ({"corp_util-1.0.0.dist-info/WHEEL": b"x"}, "no corp_util-1.0.0.dist-info/METADATA"),
        (
            {
                "corp_util-1.0.0.dist-info/METADATA": b"x",
                "other-1.0.dist-info/METADATA": b"y",
            },
            "2 .dist-info directories",
        ),
        ({"other_pkg-1.0.0.dist-info/METADATA": b"x"}, "names another distribution"),
        ({"corp_util-2.0.dist-info/METADATA": b"x"}, "names another distribution"),
        ({"corp_util-notaversion.dist-info/METADATA": b"x"}, "names another distribution"),
        # A METADATA file deeper down is not the wheel's own.
        ({"corp_util/corp_util-1.0.0.dist-info/METADATA": b"x"}, "no .dist-info directory"),
    ],
)
def test_unusable_wheels_say_why(tmp_path: Path, members: dict[str, bytes], reason: str) -> None:
    path = zipped(tmp_path, members)
    with pytest.raises(WheelMetadataError, match=reason):
        read_wheel_metadata(path, FILENAME)


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    path.write_bytes(b"not a zip at all" * 100)
    with pytest.raises(WheelMetadataError, match="not a readable zip archive"):
        read_wheel_metadata(path, FILENAME)


def test_not_a_wheel_filename(tmp_path: Path) -> None:
    path = zipped(tmp_path, {"corp_util-1.0.0.dist-info/METADATA": b"x"})
    with pytest.raises(WheelMetadataError, match="not a wheel filename"):
        read_wheel_metadata(path, "corp_util-1.0.0.tar.gz")


def test_oversized_metadata_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        # Compresses to almost nothing: the declared size is what must be checked.
        archive.writestr("corp_util-1.0.0.dist-info/METADATA", b"\0" * (MAX_METADATA_BYTES + 1))
    path = tmp_path / FILENAME
    path.write_bytes(buffer.getvalue())
    with pytest.raises(WheelMetadataError, match="larger than"):
        read_wheel_metadata(path, FILENAME)
