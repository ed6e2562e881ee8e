"""moto's S3 server (a real HTTP server) as a child process on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from tests.support.cli_process import free_port

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# moto checks no signature; these only have to look like AWS credentials to the client.
ACCESS_KEY = "AKIATESTSHAREDTIER01"
SECRET_KEY = "tier-secret-key-never-in-a-log-0123456789"
# The one bucket the `moto` fixture leaves in the server before each test.
BUCKET = "pypi-cache"


class MotoServer:
    """`python -m moto.server` on loopback; `pause`/`resume` freeze it (a tier that hangs).

    One serves a whole test session: `fresh` empties it (and starts it again, on a new port,
    after a test stopped it) for the next test.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def credentials(self) -> dict[str, str]:
        """The standard AWS environment a client of this server reads."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def fresh(self, bucket: str) -> None:
        """Running, answering, and holding nothing but an empty `bucket`."""
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                # Its old port may be anyone's by now.
                self.port = free_port()
            self.start()
        self.resume()
        assert self._request("POST", "/moto-api/reset") == 200
        self.create_bucket(bucket)

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **self.credentials},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self._request("GET", "/")
                return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.resume()
            self._proc.terminate()
            self._proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel and then never answered."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def create_bucket(self, bucket: str) -> None:
        # moto checks no signature for this, so set-up needs no S3 client.
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("PUT", f"/{bucket}")
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
        finally:
            connection.close()

    def _request(self, method: str, path: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[S3Client]:
        """An S3 client of this server, for tests to look into the bucket and tamper with it."""
        session = get_session()
        async with session.create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=AioConfig(s3={"addressing_style": "path"}),
        ) as s3:
            yield s3

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
