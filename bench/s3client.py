"""`python bench/s3client.py [--size-mb N]`: each candidate async S3 client streams one object up
to a loopback moto server and back; MB/s each way and the client process's peak RSS.

Each client runs in a process of its own (this script again, with `--client`), so its peak RSS
is its own: the object is streamed from a file and back to a file, hashed on the way down, as
the proxy would. The upload carries the object's SHA-256 (`ChecksumSHA256`) so S3 verifies it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.moto_server import MotoServer

CLIENTS = ("aiobotocore", "obstore")
BUCKET = "bench"
# The proxy's read size (blobs.CHUNK) for both clients.
CHUNK = 256 * 1024


def _make_object(path: Path, size: int) -> str:
    """A file of `size` pseudo-random bytes (incompressible, cheap to make); its sha256."""
    digest = hashlib.sha256()
    block = os.urandom(CHUNK)
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = block[: min(CHUNK, size - written)]
            # A counter per block, so no two blocks are alike.
            piece = written.to_bytes(8, "big") + piece[8:] if len(piece) >= 8 else piece
            out.write(piece)
            digest.update(piece)
            written += len(piece)
    return digest.hexdigest()


async def _aiobotocore(endpoint: str, source: Path, sha256: str, key: str) -> tuple[float, float]:
    # The proxy's own client, configured as the shared tier configures it.
    from proxy.config import StorageSettings
    from proxy.metrics import Metrics
    from proxy.shared_tier import checksum_of, open_shared_tier

    settings = StorageSettings(url=f"s3://{BUCKET}", endpoint_url=endpoint, region="us-east-1")
    async with open_shared_tier(settings, Metrics()) as tier:
        assert tier is not None
        s3 = tier.client
        _BASELINE.append(_rss_mb())
        started = time.monotonic()
        with source.open("rb") as body:
            await tier.uploader.put_object(
                Bucket=BUCKET,
                Key=key,
                Body=body,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum_of(sha256),
            )
        up = time.monotonic() - started
        started = time.monotonic()
        digest = hashlib.sha256()
        answer = await s3.get_object(Bucket=BUCKET, Key=key)
        with tempfile.TemporaryFile() as out:
            async with answer["Body"] as stream:
                while chunk := await stream.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        down = time.monotonic() - started
        await s3.delete_object(Bucket=BUCKET, Key=key)
    assert digest.hexdigest() == sha256
    return up, down


async def _obstore(endpoint: str, source: Path, sha256: str, key: str) -> tuple[float, float]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        region="us-east-1",
        client_options={"allow_http": True},
        checksum_algorithm="sha256",
    )
    _BASELINE.append(_rss_mb())
    started = time.monotonic()
    await obstore.put_async(store, key, source)
    up = time.monotonic() - started
    started = time.monotonic()
    digest = hashlib.sha256()
    answer = await obstore.get_async(store, key)
    with tempfile.TemporaryFile() as out:
        async for buffer in answer.stream(min_chunk_size=CHUNK):
            chunk = bytes(buffer)
            digest.update(chunk)
            out.write(chunk)
    down = time.monotonic() - started
    await obstore.delete_async(store, key)
    assert digest.hexdigest() == sha256
    return up, down


def _rss_mb() -> float:
    """This process's resident set now, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# The RSS once the client is set up, before the first byte moves: its imports, not its buffers.
_BASELINE: list[float] = []


def _child(client: str, endpoint: str, source: Path, sha256: str) -> None:
    run = _aiobotocore if client == "aiobotocore" else _obstore
    up, down = asyncio.run(run(endpoint, source, sha256, f"{client}/object"))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {"up": up, "down": down, "peak_mb": peak_kib / 1024, "baseline_mb": _BASELINE[0]}
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/s3client.py", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="object size in MiB")
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sha256", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        _child(args.client, args.endpoint, args.source, args.sha256)
        return
    size = args.size_mb * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp, MotoServer() as moto:
        moto.create_bucket(BUCKET)
        source = Path(tmp) / "object"
        sha256 = _make_object(source, size)
        env = {**os.environ, **moto.credentials}
        print(f"object: {args.size_mb} MiB; moto {moto.endpoint}")
        print("| client | up MB/s | down MB/s | RSS before MB | peak RSS MB |")
        print("|---|---|---|---|---|")
        for client in CLIENTS:
            command = [sys.executable, __file__, "--client", client, "--endpoint", moto.endpoint]
            command += ["--source", str(source), "--sha256", sha256]
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            up, down = size / figures["up"] / 1e6, size / figures["down"] / 1e6
            before, peak = figures["baseline_mb"], figures["peak_mb"]
            print(f"| {client} | {up:.0f} | {down:.0f} | {before:.0f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
