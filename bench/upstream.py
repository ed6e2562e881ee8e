"""The bench's GitLab: the tests' FakeGitLab serving the data set from disk, in its own process.

Run by bench/run.py as `python -m bench.upstream DATA_DIR TOKEN`; prints its URL as one JSON line,
then serves until SIGTERM (which the kernel also sends if the bench dies). Private project 42
(token required) is what the proxy reads; public project 43 holds the same files for proxpi, which
cannot send credentials. `POST /-/bench/set` changes the added latency and a per-download rate
limit; `GET /-/bench/counts` answers the request counts by kind (`file`, `page`, ...), the file
bytes sent (`bytes`), and of the file requests the GETs (`gets`: whole files and byte ranges),
the distinct files asked for (`distinct`, and their `sha256s`) and the HEADs (`probes`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from bench import data
from tests.support.fake_gitlab import FakeGitLab, Reply, byte_range

PRIVATE_PROJECT = 42
PUBLIC_PROJECT = 43
CHUNK = 256 * 1024


class BenchGitLab(FakeGitLab):
    """FakeGitLab whose file bodies live on disk (1 GiB files stay out of memory)."""

    def __init__(self, root: Path, entries: list[data.Entry], token: str) -> None:
        super().__init__(token=token)
        self.rate = 0.0  # bytes/s per download; 0 = as fast as sendfile goes
        self.paths: dict[tuple[str, str], Path] = {}
        self.add_group(7, "platform")
        self.add_project(PRIVATE_PROJECT, "platform/tools", group_id=7)
        self.add_project(PUBLIC_PROJECT, "platform/mirror", group_id=7, public=True)
        for e in entries:
            for project in (PRIVATE_PROJECT, PUBLIC_PROJECT):
                # The body is on disk; the fake only needs the digest it advertises.
                self.add_file(project, e.name, e.version, e.filename, b"", sha256=e.sha256)
            self.paths[(e.sha256, e.filename)] = root / "files" / e.filename

    def _routes(self) -> list[web.RouteDef]:
        return [
            *super()._routes(),
            web.get("/-/bench/counts", self._counts, name="bench.counts"),
            web.post("/-/bench/set", self._set, name="bench.set"),
        ]

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse | None:
        route = request.match_info.route.name or ""
        if route.startswith("bench."):
            return await handler(request)  # control calls get no added latency
        return await super()._answer(request, handler)

    async def _counts(self, request: web.Request) -> web.StreamResponse:
        files = [r for r in self.requests if r.kind == "file"]
        return web.json_response(
            {
                **self.counts,
                "bytes": self.file_bytes_sent,
                "gets": sum(1 for r in files if r.method == "GET"),
                "distinct": len({r.path.split("?")[0] for r in files}),
                "sha256s": sorted({r.path.split("/files/")[1].split("/")[0] for r in files}),
                "probes": sum(1 for r in files if r.method == "HEAD"),
            }
        )

    async def _set(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.delay = float(body.get("delay", self.delay))
        self.rate = float(body.get("rate", self.rate))
        if body.get("reset"):
            self.counts.clear()
            self.requests.clear()
            self.file_bytes_sent = 0
        return web.json_response({"delay": self.delay, "rate": self.rate})

    async def _file(self, request: web.Request, project_ids: set[int]) -> web.StreamResponse:
        sha256, filename = request.match_info["sha256"], request.match_info["filename"]
        file = self.find_file(sha256, filename, project_ids)
        if file is None:
            raise Reply(404, "404 Not Found")
        path = self.paths[(file.sha256, file.filename)]
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{file.filename}"',
            "Accept-Ranges": "bytes",
        }
        size = path.stat().st_size
        ranged = byte_range(request.headers.get("Range"), size)
        wanted = ranged or range(size)
        if request.method != "HEAD":
            self.file_bytes_sent += len(wanted)
        if not self.rate:
            # Honours Range and HEAD itself, by sendfile.
            return web.FileResponse(path, chunk_size=CHUNK, headers=headers)
        return await self._paced(request, path, headers, wanted, ranged is not None)

    async def _paced(
        self,
        request: web.Request,
        path: Path,
        headers: dict[str, str],
        wanted: range,
        ranged: bool,
    ) -> web.StreamResponse:
        """Send at `rate` bytes/s, like GitLab across a link of that speed (one range too)."""
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(headers=headers)
        size = path.stat().st_size
        if ranged and wanted:
            response.set_status(206)
            response.headers["Content-Range"] = f"bytes {wanted.start}-{wanted.stop - 1}/{size}"
        response.content_length = len(wanted)
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        start, sent = loop.time(), 0
        with path.open("rb") as body:
            body.seek(wanted.start)
            while sent < len(wanted) and (chunk := body.read(min(CHUNK, len(wanted) - sent))):
                await response.write(chunk)
                sent += len(chunk)
                ahead = start + sent / self.rate - loop.time()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await response.write_eof()
        return response


async def main(root: Path, token: str) -> None:
    gitlab = BenchGitLab(root, data.load(root), token)
    await gitlab.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"url": gitlab.url}), flush=True)
    await stop.wait()
    await gitlab.stop()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
