"""The shared tier: verified blobs and last good page copies in an S3 bucket, behind the disk."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import aiohttp
import yarl

from .config import ConfigError, StorageSettings
from .metrics import Metrics

if TYPE_CHECKING:
    from aiobotocore.session import AioSession, ClientCreatorContext
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import GetObjectOutputTypeDef, HeadObjectOutputTypeDef

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# At most this many uploads run at once; more wait their turn in the background.
UPLOADS = 4
# S3's limit for one PUT: a bigger file is not put (multipart would lose the whole-object SHA-256).
MAX_PUT = 5 * 1024**3
# After a failure the tier is left alone this long, so an outage costs each miss nothing.
BACKOFF_SECONDS = 10.0
UPLOAD_READ_TIMEOUT = 300.0
PAGE_VERSION = 1


class TierFailed(Exception):
    """The shared tier did not answer (network, timeout, refusal); the message is client-safe."""


def checksum_of(sha256: str) -> str:
    """S3's ChecksumSHA256 form of a hex digest: base64 of the raw bytes."""
    return base64.b64encode(bytes.fromhex(sha256)).decode()


def _tier_errors() -> tuple[type[BaseException], ...]:
    """What a tier call may raise that means "not now", never a bug of ours. botocore is
    imported here, with a tier only: it costs every other proxy 0.1 s of start-up."""
    import botocore.exceptions

    return (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        aiohttp.ClientError,
        TimeoutError,
        OSError,
    )


def _error_code(e: BaseException) -> str | None:
    """S3's error code (NoSuchKey, 404, AccessDenied...), or None for another failure."""
    import botocore.exceptions

    if not isinstance(e, botocore.exceptions.ClientError):
        return None
    return str(e.response.get("Error", {}).get("Code", "error"))


def _failure(e: BaseException) -> str:
    """What went wrong, without anything a credential could hide in: a class and an S3 code."""
    import botocore.exceptions

    if isinstance(e, botocore.exceptions.ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{_error_code(e)} (HTTP {status})"
    return type(e).__name__


def _is_absent(e: BaseException) -> bool:
    return _error_code(e) in ("404", "NoSuchKey", "NotFound")


@dataclass(slots=True)
class TierBlob:
    """A blob being read back from the tier: its size and its body, chunk by chunk."""

    size: int
    _answer: GetObjectOutputTypeDef
    _tier: SharedTier

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body; TierFailed when the tier stops sending it."""
        body = self._answer["Body"]
        try:
            while chunk := await body.read(CHUNK):
                self._tier.metrics.shared_tier("bytes_read", len(chunk))
                yield chunk
        except self._tier.errors as e:
            raise self._tier.failed("read", e) from None

    def close(self) -> None:
        """Let the connection go, read to the end or not."""
        self._answer["Body"].close()


class SharedTier:
    """Blobs (`blobs/<sha256>`) and pages (`pages/<sha256 of the key>`) under the url's prefix.

    Every call fails soft: an error is counted, shown on /-/ready and answered as a miss, and
    the tier is skipped for BACKOFF_SECONDS, so an outage never costs a client more than one
    timeout. Uploads run in the background, bounded and deduplicated.
    """

    def __init__(
        self, settings: StorageSettings, client: S3Client, uploader: S3Client, metrics: Metrics
    ) -> None:
        url = yarl.URL(settings.url)
        self.bucket = url.raw_host or ""
        prefix = url.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.client = client
        self.errors = _tier_errors()
        # Puts the blobs, with a longer wait for the answer to a big body.
        self.uploader = uploader
        self.metrics = metrics
        self._uploads: dict[str, asyncio.Task[None]] = {}
        # The newest copy of a page waiting while an older one is being put.
        self._pending_pages: dict[str, bytes] = {}
        self._slots = asyncio.Semaphore(UPLOADS)
        self._skip_until = 0.0
        # Why the tier failed last, while it has not answered well since.
        self.problem: str | None = None
        self.last_answer = 0.0

    def blob_key(self, sha256: str) -> str:
        return f"{self.prefix}blobs/{sha256}"

    def page_key(self, key: str) -> str:
        # Page keys hold slashes and names; a digest keeps the object names plain and short.
        return f"{self.prefix}pages/{hashlib.sha256(key.encode()).hexdigest()}"

    async def _head(self, key: str) -> HeadObjectOutputTypeDef:
        return await self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")

    def failed(self, operation: str, e: BaseException) -> TierFailed:
        reason = _failure(e)
        self.metrics.shared_tier("error")
        self.problem = f"shared tier failed ({operation}: {reason})"
        self._skip_until = time.monotonic() + BACKOFF_SECONDS
        log.warning("shared tier: %s failed: %s", operation, reason)
        return TierFailed(self.problem)

    def _answered(self) -> None:
        self.problem = None
        self.last_answer = time.monotonic()

    @property
    def skipping(self) -> bool:
        """Whether the tier failed moments ago and is left alone for now."""
        return time.monotonic() < self._skip_until

    async def holds(self, sha256: str, filename: str) -> bool:
        """Whether the tier holds the verified blob under this name (a HEAD, no body); not
        counted as a look-up, which the fill that follows is."""
        return await self._head_blob(sha256, filename, counted=False) is not None

    async def _head_blob(
        self, sha256: str, filename: str, *, counted: bool = True
    ) -> HeadObjectOutputTypeDef | None:
        """The blob's HEAD if the tier holds it under this name; an object whose stored SHA-256
        (S3 verified it on write) is not the name's is removed, never read."""
        if self.skipping:
            return None
        key = self.blob_key(sha256)
        try:
            head = await self._head(key)
        except self.errors as e:
            if _is_absent(e):
                self._answered()
                if counted:
                    self.metrics.shared_tier("miss")
                return None
            self.failed("head", e)
            return None
        self._answered()
        stored = head.get("ChecksumSHA256")
        if stored is not None and stored != checksum_of(sha256):
            log.error("shared tier: %s holds other bytes (its SHA-256 differs); removed", key)
            self.metrics.shared_tier("bad")
            await self.discard_blob(sha256)
            return None
        if head.get("Metadata", {}).get("filename") != filename:
            # The same bytes under another name: only GitLab can say this name has them.
            if counted:
                self.metrics.shared_tier("miss")
            return None
        return head

    async def open_blob(self, sha256: str, filename: str) -> TierBlob | None:
        """The blob's body if the tier holds it under this name, else None; the fill hashes
        the bytes again as they land."""
        head = await self._head_blob(sha256, filename)
        if head is None:
            return None
        key = self.blob_key(sha256)
        try:
            answer = await self.client.get_object(Bucket=self.bucket, Key=key, IfMatch=head["ETag"])
        except self.errors as e:
            if _is_absent(e) or _error_code(e) == "PreconditionFailed":
                self.metrics.shared_tier("miss")
                return None
            self.failed("get", e)
            return None
        self.metrics.shared_tier("hit")
        return TierBlob(answer["ContentLength"], answer, self)

    async def discard_blob(self, sha256: str) -> None:
        """Remove an object that does not verify, so no replica reads it again."""
        with contextlib.suppress(TierFailed):
            await self._delete(self.blob_key(sha256))

    async def _delete(self, key: str) -> None:
        try:
            await self.client.delete_object(Bucket=self.bucket, Key=key)
        except self.errors as e:
            raise self.failed("delete", e) from None

    def upload_blob(
        self, sha256: str, filename: str, size: int, opener: Callable[[], BinaryIO]
    ) -> None:
        """Put a verified blob in the background, unless it is being put or is there already."""
        if size > MAX_PUT:
            log.info("shared tier: %s is over 5 GiB (one S3 PUT); kept local only", filename)
            return
        self._background(f"blob:{sha256}", self._put_blob(sha256, filename, size, opener))

    def upload_page(self, key: str, model: str, fetched_at: float) -> None:
        """Put a last good page copy in the background; the newest one wins."""
        body = json.dumps(
            {"v": PAGE_VERSION, "key": key, "fetched_at": fetched_at, "model": model}
        ).encode()
        name = f"page:{key}"
        if self._under_way(name):
            self._pending_pages[key] = body
            return
        self._background(name, self._put_page(key, body))

    def _under_way(self, name: str) -> bool:
        # A task that just ended is still listed until its done callback runs.
        task = self._uploads.get(name)
        return task is not None and not task.done()

    def _background(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        if self._under_way(name):
            work.close()
            return
        task = asyncio.create_task(self._bounded(work))
        self._uploads[name] = task

        def done(ended: asyncio.Task[None]) -> None:
            if self._uploads.get(name) is ended:
                del self._uploads[name]

        task.add_done_callback(done)

    async def _bounded(self, work: Coroutine[Any, Any, None]) -> None:
        async with self._slots:
            try:
                await work
            except TierFailed:
                self.metrics.shared_tier("upload_failed")

    async def _put_blob(
        self, sha256: str, filename: str, size: int, opener: Callable[[], BinaryIO]
    ) -> None:
        key = self.blob_key(sha256)
        try:
            head = await self._head(key)
            if head.get("ChecksumSHA256") == checksum_of(sha256):
                return  # another replica put it first
        except self.errors as e:
            if not _is_absent(e):
                raise self.failed("head", e) from None
        try:
            body = await asyncio.to_thread(opener)
        except OSError:
            return  # evicted meanwhile: nothing to put
        try:
            # S3 checks the body against our own SHA-256: a copy that went wrong is refused.
            await self.uploader.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentLength=size,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum_of(sha256),
                Metadata={"filename": filename},
            )
        except self.errors as e:
            raise self.failed("put", e) from None
        finally:
            body.close()
        self._answered()
        self.metrics.shared_tier("uploaded")

    async def _put_page(self, key: str, body: bytes) -> None:
        while True:
            try:
                await self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.page_key(key),
                    Body=body,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum_of(hashlib.sha256(body).hexdigest()),
                    ContentType="application/json",
                )
            except self.errors as e:
                raise self.failed("put", e) from None
            self._answered()
            self.metrics.shared_tier("uploaded")
            newer = self._pending_pages.pop(key, None)
            if newer is None:
                return
            body = newer

    async def page(self, key: str) -> tuple[str, float] | None:
        """A page's last good copy (its stored model text, when GitLab gave it), or None."""
        if self.skipping:
            return None
        try:
            answer = await self.client.get_object(
                Bucket=self.bucket, Key=self.page_key(key), ChecksumMode="ENABLED"
            )
            async with answer["Body"] as stream:
                body = await stream.read()
        except self.errors as e:
            if _is_absent(e):
                self._answered()
                self.metrics.shared_tier("miss")
            else:
                self.failed("get", e)
            return None
        self._answered()
        found = parse_page(body, key)
        if found is None and written_later(body):
            # A replica already upgraded keeps its last good copies here: not ours to remove.
            log.info("shared tier: the copy of page %s is a later release's; not read", key)
            self.metrics.shared_tier("miss")
            return None
        if found is None:
            log.error("shared tier: the copy of page %s is unreadable; removed", key)
            self.metrics.shared_tier("bad")
            with contextlib.suppress(TierFailed):
                await self._delete(self.page_key(key))
            return None
        self.metrics.shared_tier("hit")
        return found

    async def reachable(self) -> bool:
        """Whether the tier answers now (a HEAD of a key that need not exist)."""
        try:
            await self.client.head_object(Bucket=self.bucket, Key=f"{self.prefix}blobs/")
        except self.errors as e:
            if not _is_absent(e):
                self.failed("probe", e)
                return False
        self._answered()
        return True

    async def objects(self, kind: str) -> AsyncIterator[tuple[str, int]]:
        """Every object under `kind/` (blobs, pages) as (its name there, size), for `verify`."""
        paginator = self.client.get_paginator("list_objects_v2")
        start = f"{self.prefix}{kind}/"
        try:
            async for listing in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for item in listing.get("Contents", []):
                    yield item["Key"].removeprefix(start), item.get("Size", 0)
        except self.errors as e:
            raise self.failed("list", e) from None

    async def hash_object(self, key: str, progress: Callable[[int], None]) -> str:
        """An object's actual SHA-256, read as it streams."""
        digest = hashlib.sha256()
        await self._read_object(key, progress, digest.update)
        return digest.hexdigest()

    async def read_object(self, key: str, progress: Callable[[int], None]) -> bytes:
        """An object whole: a page copy, which `verify` parses (never a blob: those stream)."""
        chunks: list[bytes] = []
        await self._read_object(key, progress, chunks.append)
        return b"".join(chunks)

    async def _read_object(
        self, key: str, progress: Callable[[int], None], take: Callable[[bytes], object]
    ) -> None:
        try:
            answer = await self.client.get_object(Bucket=self.bucket, Key=key)
            async with answer["Body"] as stream:
                while chunk := await stream.read(CHUNK):
                    take(chunk)
                    progress(len(chunk))
        except self.errors as e:
            raise self.failed("get", e) from None

    async def remove(self, key: str) -> None:
        await self._delete(key)

    async def close(self, grace: float | None) -> None:
        """Let the uploads under way finish for up to `grace` seconds, then drop the rest."""
        tasks = list(self._uploads.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no upload is under way (tests and the bench)."""
        while self._uploads:
            await asyncio.gather(*self._uploads.values(), return_exceptions=True)


def parse_page(body: bytes, key: str) -> tuple[str, float] | None:
    """A page object's (model text, fetched_at), or None when it is not a copy of `key`."""
    try:
        document = json.loads(body)
        version = document.get("v")
        if type(version) is not int or not 1 <= version <= PAGE_VERSION:
            return None
        if document.get("key") != key:
            return None
        return str(document["model"]), float(document["fetched_at"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def written_later(body: bytes) -> bool:
    """Whether a page object is in a format only a later release reads (replicas upgrade one
    at a time): kept for it, never removed as bad."""
    try:
        version = json.loads(body).get("v")
    except (ValueError, AttributeError):
        return False
    return type(version) is int and version > PAGE_VERSION


def check_client(settings: StorageSettings) -> None:
    """ConfigError unless the tier's S3 client can be made of `settings` and the AWS environment
    (a region botocore takes, a profile that exists, no access key without its secret): checked
    before any worker starts, so a mistake is one line, not a traceback in each worker."""
    import botocore.exceptions
    import botocore.session
    from botocore.utils import validate_region_name

    try:
        if settings.region:
            validate_region_name(settings.region)
    except botocore.exceptions.BotoCoreError as e:
        raise ConfigError(f"storage.region: {e}") from None
    if os.environ.get("AWS_ACCESS_KEY_ID") and not os.environ.get("AWS_SECRET_ACCESS_KEY"):
        raise ConfigError("storage: AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY")
    try:
        session = botocore.session.get_session()
        session.get_scoped_config()
        if not settings.region and (region := session.get_config_variable("region")):
            validate_region_name(region)
    except botocore.exceptions.BotoCoreError as e:
        # botocore's messages here name variables, files and profiles, never a secret.
        raise ConfigError(f"storage: no S3 client from the AWS environment: {e}") from None


@contextlib.asynccontextmanager
async def open_shared_tier(
    settings: StorageSettings, metrics: Metrics
) -> AsyncIterator[SharedTier | None]:
    """The tier of `storage.url`, or None without one; credentials from the AWS environment."""
    if not settings.url:
        yield None
        return
    check_client(settings)
    from aiobotocore.session import get_session

    session = get_session()
    async with (
        _client(session, settings, settings.timeout) as client,
        # A big body takes the server a while to take in and check before it answers; no
        # client waits on an upload, so it may take that while.
        _client(session, settings, max(settings.timeout, UPLOAD_READ_TIMEOUT)) as uploader,
    ):
        yield SharedTier(settings, client, uploader, metrics)


def _client(
    session: AioSession, settings: StorageSettings, read_timeout: float
) -> ClientCreatorContext[S3Client]:
    from aiobotocore.config import AioConfig

    config = AioConfig(
        connect_timeout=settings.timeout,
        read_timeout=read_timeout,
        # One try: a failing tier is skipped for GitLab, never retried while a client waits.
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=50,
        # Our own SHA-256 goes with each PUT (S3 checks it), so the body is not hashed again
        # to sign it, even over plain HTTP; reads are hashed once, by the fill.
        # S3-compatible servers (MinIO, Ceph RGW) are addressed by path; AWS as it prefers.
        s3={
            "payload_signing_enabled": False,
            "addressing_style": "path" if settings.endpoint_url else "auto",
        },
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.create_client(
        "s3",
        endpoint_url=settings.endpoint_url or None,
        region_name=settings.region or None,
        config=config,
    )
