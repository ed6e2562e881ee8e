"""The bench data set: wheels and big files on disk, and a manifest the fake GitLab serves."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.support.wheels import make_sdist, make_wheel

# Bump when the set changes, so an old bench/.data is rebuilt instead of half-reused.
VERSION = 4
MiB = 1024 * 1024

SMALL = "bench-small"  # one ~10 KB wheel: figure 1
BIG = "bench-big"  # one 16 MiB file: figure 2
PAGE = "bench-page"  # a page with 40 releases x 2 files: figure 3
COLD_SMALL = "bench-cold-small"  # one fresh file per cold run: figure 4
COLD_BIG = "bench-cold-big"
FANOUT = "bench-fanout"  # 100 MiB, one per fan-out run: figure 5
LONE = "bench-lone"  # 100 MiB, the lone client's file in the same run
HUGE = "bench-huge"  # 1 GiB: figure 6
RESOLVE_TOP = [f"bench-app-{i}" for i in range(10)]  # figure 7
# Figure 8: five versions of a 200 MiB wheel over a small tree; the two newest need a runtime
# the requirements rule out, so resolvers look at three versions before settling on 1.2.
CUDA = "bench-cuda"
CUDA_RUNTIME = "bench-cuda-runtime"
CUDA_REQUIREMENTS = [CUDA, f"{CUDA_RUNTIME}<1.1"]
CUDA_SIZE = 200 * MiB

BIG_SIZE = 16 * MiB
FANOUT_SIZE = 100 * MiB
HUGE_SIZE = 1024 * MiB
MAX_RUNS = 7  # cold and fan-out files exist for this many runs


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    filename: str
    sha256: str
    size: int
    requires_python: str = ""


def _bulk(path: Path, size: int, seed: str) -> str:
    """Write `size` bytes that differ per seed (a unique head, then a random block repeated)."""
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        head = hashlib.sha256(seed.encode()).digest() * 2
        out.write(head)
        digest.update(head)
        left = size - len(head)
        while left:
            chunk = block[: min(left, MiB)]
            out.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _big_wheel(
    path: Path, name: str, version: str, requires: list[str], payload: int
) -> tuple[str, int]:
    """A real wheel with `payload` stored (incompressible) bytes first and its METADATA last,
    written without holding it in memory; (sha256, size)."""
    dist = name.replace("-", "_")
    dist_info = f"{dist}-{version}.dist-info"
    metadata = "".join(
        [
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
            *(f"Requires-Dist: {r}\n" for r in requires),
        ]
    )
    block = os.urandom(MiB)
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo(f"{dist}/payload.bin", date_time=(1980, 1, 1, 0, 0, 0))
        with archive.open(info, "w", force_zip64=True) as out:
            head = hashlib.sha256(f"{name}=={version}".encode()).digest() * 2
            out.write(head)
            left = payload - len(head)
            while left:
                out.write(block[: min(left, MiB)])
                left -= min(left, MiB)
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        archive.writestr(f"{dist_info}/RECORD", "")
    digest = hashlib.sha256()
    with path.open("rb") as written:
        while chunk := written.read(MiB):
            digest.update(chunk)
    return digest.hexdigest(), path.stat().st_size


def _resolve_set() -> list[tuple[str, str, list[str], int]]:
    """(name, version, requires, payload) for 10 apps over libs, utils and one core: 23 names."""
    dists: list[tuple[str, str, list[str], int]] = []
    for version in ("1.0", "1.1", "2.0"):
        dists.append(("bench-core", version, [], 200_000))
    for i in range(5):
        for version in ("1.0", "1.2"):
            dists.append((f"bench-lib-{i}", version, ["bench-core>=1.1"], 60_000 + 20_000 * i))
    for i in range(7):
        for version in ("0.9", "1.0"):
            dists.append((f"bench-util-{i}", version, [], 15_000 + 5_000 * i))
    for i, name in enumerate(RESOLVE_TOP):
        requires = [f"bench-lib-{i % 5}>=1.0", f"bench-util-{(i * 3) % 7}"]
        for version in ("1.0", "2.0", "2.1"):
            dists.append((name, version, requires, 30_000 + 10_000 * i))
    return dists


def build(root: Path) -> list[Entry]:
    """Create (or reuse) the data set under `root`; return its manifest."""
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        saved = json.loads(manifest_path.read_text())
        reused = [Entry(**e) for e in saved["entries"]]
        if saved.get("version") == VERSION and all(_present(root, e) for e in reused):
            return reused
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []

    def add(name: str, version: str, filename: str, content: bytes) -> None:
        (files / filename).write_bytes(content)
        sha = hashlib.sha256(content).hexdigest()
        entries.append(Entry(name, version, filename, sha, len(content)))

    def add_bulk(name: str, version: str, size: int) -> None:
        filename = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        sha = _bulk(files / filename, size, f"{name}=={version}")
        entries.append(Entry(name, version, filename, sha, size))

    add(SMALL, "1.0", *make_wheel(SMALL, "1.0", payload_size=9_500))
    add_bulk(BIG, "1.0", BIG_SIZE)
    for i in range(40):
        version = f"{i // 10}.{i % 10}.0"
        add(PAGE, version, *make_wheel(PAGE, version))
        add(PAGE, version, *make_sdist(PAGE, version))
    for run in range(MAX_RUNS):
        version = f"{run + 1}.0"
        add(COLD_SMALL, version, *make_wheel(COLD_SMALL, version, payload_size=9_500))
        add_bulk(COLD_BIG, version, BIG_SIZE)
        add_bulk(FANOUT, version, FANOUT_SIZE)
        add_bulk(LONE, version, FANOUT_SIZE)
    add_bulk(HUGE, "1.0", HUGE_SIZE)
    for name, version, requires, payload in _resolve_set():
        add(name, version, *make_wheel(name, version, requires=requires, payload_size=payload))
    for version in ("1.0", "1.1", "1.2"):
        add(CUDA_RUNTIME, version, *make_wheel(CUDA_RUNTIME, version, payload_size=20_000))
    add("bench-cuda-util", "1.0", *make_wheel("bench-cuda-util", "1.0", payload_size=20_000))
    for version, runtime in (
        ("1.0", "1.0"),
        ("1.1", "1.0"),
        ("1.2", "1.0"),
        ("1.3", "1.1"),
        ("1.4", "1.2"),
    ):
        requires = [f"{CUDA_RUNTIME}>={runtime}", "bench-cuda-util"]
        filename = f"{CUDA.replace('-', '_')}-{version}-py3-none-any.whl"
        sha, size = _big_wheel(files / filename, CUDA, version, requires, CUDA_SIZE)
        entries.append(Entry(CUDA, version, filename, sha, size))
    manifest = {"version": VERSION, "entries": [asdict(e) for e in entries]}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return entries


def _present(root: Path, entry: Entry) -> bool:
    path = root / "files" / entry.filename
    return path.exists() and path.stat().st_size == entry.size


def load(root: Path) -> list[Entry]:
    saved = json.loads((root / "manifest.json").read_text())
    return [Entry(**e) for e in saved["entries"]]


def find(entries: list[Entry], name: str, version: str | None = None) -> Entry:
    for e in entries:
        if e.name == name and (version is None or e.version == version):
            return e
    raise KeyError(f"{name} {version}")
