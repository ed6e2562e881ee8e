"""The exception tree of the proxy; `error_middleware` maps it to HTTP in one place."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

log = logging.getLogger(__name__)


# GitLab's own 401 challenge: pip answers it from netrc or its keyring, as against GitLab.
GITLAB_CHALLENGE = 'Basic realm="GitLab Packages Registry"'


class ProxyError(Exception):
    """An error with an HTTP status and a message safe to show a client."""

    status = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(ProxyError):
    status = 400


class Unauthorized(ProxyError):
    status = 401


class Forbidden(ProxyError):
    status = 403


class NotFound(ProxyError):
    status = 404


class Offline(NotFound):
    """A miss while `cache.offline` is on: nothing may be asked of upstream."""

    def __init__(self) -> None:
        super().__init__("not in the cache, and this proxy is offline (cache.offline)")


class NotAcceptable(ProxyError):
    status = 406


class RangeNotSatisfiable(ProxyError):
    status = 416


class PayloadTooLarge(ProxyError):
    status = 413


class TooManyRequests(ProxyError):
    status = 429


class UpstreamError(ProxyError):
    """GitLab answered with something the proxy cannot pass on as it is."""

    status = 502


class CredentialsRefused(UpstreamError):
    """GitLab refused the proxy's own credentials: the operator's to fix, not an outage."""


class UpstreamUnavailable(ProxyError):
    """GitLab could not be reached, or said it is unavailable."""

    status = 503


class UpstreamTimeout(ProxyError):
    status = 504


class UpstreamStatus(ProxyError):
    """GitLab's own status and message, passed on to the client (404, 401, 403...)."""

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, headers=headers)
        self.status = status


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The JSON error body GitLab itself uses: {"message": ...}."""
    return web.json_response({"message": message}, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProxyError as e:
        return error_response(e.status, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400 or e.empty_body:
            raise
        return error_response(
            e.status, e.reason, {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        )


class Redirect(ProxyError):
    """GitLab's package forwarding, passed on to the client as GitLab would."""

    status = 302

    def __init__(self, location: str) -> None:
        super().__init__("package not in GitLab; forwarded", headers={"Location": location})
