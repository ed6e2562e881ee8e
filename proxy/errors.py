"""Every exception a client is answered with, and `error_middleware`, which maps them to HTTP.

    ProxyError                  500  message safe to show a client, optional headers
    ├── BadRequest              400
    │   └── Malformed           400  an upload's multipart body does not parse
    ├── ClientGone              400  the uploading client went away; nobody reads the answer
    ├── ProxyChallenge          401  this proxy's own challenge: its access.tokens are asked for
    ├── Forbidden               403
    │   └── PolicyRefused       403  a file the [policy] rules keep from clients; JSON says which
    ├── NotFound                404
    │   ├── Offline             404  a miss while cache.offline is on
    │   └── Protected           404  a protected name GitLab does not host (policy.protected)
    ├── NotAcceptable           406
    ├── PayloadTooLarge         413
    ├── RangeNotSatisfiable     416
    ├── TooManyRequests         429
    ├── UpstreamError           502  GitLab said something that cannot be passed on
    │   └── CredentialsRefused  502  GitLab refused the proxy's own token
    ├── UpstreamUnavailable     503
    ├── CacheUnwritable         503  a fill lost the disk; its clients get a pass-through
    ├── UpstreamTimeout         504
    ├── UpstreamStatus          GitLab's own status and message, passed on
    │   └── GitLabChallenge     401  GitLab's challenge: credentials for GitLab are asked for
    └── Redirect                302  GitLab's package forwarding, passed on

Two 401s, because there are two places a client's credentials are for: ProxyChallenge asks
for a token of this proxy (access control, realm "gitlab-pypi-proxy"); GitLabChallenge asks
for GitLab credentials, in GitLab's own realm, so pip's netrc or keyring entry for GitLab
answers it. One class would have to be told which realm each time, and a mix-up would send
GitLab tokens to the wrong prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

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

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.headers)


class BadRequest(ProxyError):
    status = 400


class Malformed(BadRequest):
    def __init__(self, why: str) -> None:
        super().__init__(f"400 Bad request - malformed multipart body: {why}")


class ClientGone(ProxyError):
    """The uploading client went away mid-body; nobody is left to answer."""

    status = 400


class ProxyChallenge(ProxyError):
    """This proxy's own 401: the request needs one of its access tokens."""

    status = 401


class Forbidden(ProxyError):
    status = 403


class PolicyRefused(Forbidden):
    """A file the `[policy]` rules refuse: `{"error", "rule", "available_at"}`, and the message
    as the reason phrase too, since pip prints only that ("403 Client Error: <reason>")."""

    def __init__(self, message: str, rule: str, available_at: str | None) -> None:
        super().__init__(message)
        self.rule = rule
        self.available_at = available_at

    def response(self) -> web.Response:
        body = {"error": self.message, "rule": self.rule, "available_at": self.available_at}
        return web.json_response(body, status=self.status, reason=self.message)


class NotFound(ProxyError):
    status = 404


class Protected(NotFound):
    """A protected name (policy.protected) GitLab does not host: never the public index's."""


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


class CacheUnwritable(ProxyError):
    """A fill could not use the disk; clients that got nothing yet are served a pass-through."""

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


class GitLabChallenge(UpstreamStatus):
    """No credentials where some are needed: GitLab's own challenge, so pip asks netrc/keyring."""

    def __init__(self, message: str = "401 Unauthorized") -> None:
        super().__init__(401, message, headers={hdrs.WWW_AUTHENTICATE: GITLAB_CHALLENGE})


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The JSON error body GitLab itself uses: {"message": ...}."""
    return web.json_response({"message": message}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProxyError as e:
        return e.response()
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
