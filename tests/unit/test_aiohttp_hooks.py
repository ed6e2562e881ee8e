"""The private aiohttp hooks files.py relies on are still there (aiohttp is pinned below 3.15)."""

from __future__ import annotations

import inspect

from aiohttp import web, web_fileresponse


def test_fileresponse_sendfile_hook_and_nosendfile_flag_exist() -> None:
    # _HeldFileResponse overrides _sendfile to count kernel-sent bytes for the access log.
    hook = getattr(web.FileResponse, "_sendfile", None)
    assert hook is not None and inspect.iscoroutinefunction(hook)
    parameters = list(inspect.signature(hook).parameters)
    assert parameters == ["self", "request", "fobj", "offset", "count"]
    assert isinstance(web_fileresponse.NOSENDFILE, bool)
