"""Credential policy: whose credentials go where, and what a caller may see from shared copies."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import hdrs

from .errors import Forbidden, ProxyError, UpstreamError

if TYPE_CHECKING:
    # Only for types: config.py asks this module for its tokens_file rule.
    from .config import AccessSettings, Settings, UpstreamSettings

# GitLab's own token headers. A credential that travels in one is held as "<header> <token>",
# as an Authorization value is held as "<scheme> <value>".
TOKEN_HEADERS = ("Private-Token", "Deploy-Token")
# The username GitLab reserves for CI job tokens, which it takes only as Basic on these routes.
JOB_TOKEN_USER = "gitlab-ci-token"
# What GitLab's bare refusals say; any other message is a reason worth passing on.
BARE_REFUSALS = frozenset({"401", "403", "401 Unauthorized", "403 Forbidden"})


def credential_headers(credential: str) -> dict[str, str]:
    """The header a credential travels in: GitLab's own token header, or Authorization."""
    name, _, token = credential.partition(" ")
    if name in TOKEN_HEADERS:
        return {name: token}
    return {hdrs.AUTHORIZATION: credential}


def outgoing_headers(authorization: str | None, *, to_origin: bool) -> dict[str, str]:
    """The credential headers of a request: only to the upstream's own origin, never to a
    host it redirects to (object storage, a CDN, the public index)."""
    if authorization and to_origin:
        return credential_headers(authorization)
    return {}


def refuses_credentials(status: int, message: str) -> bool:
    """Whether GitLab's answer refuses the credential itself: a 401, or a 403 with no reason
    or for a token without the scope it needs."""
    return status == 401 or (
        status == 403 and (message in BARE_REFUSALS or message.startswith("insufficient_scope"))
    )


def tokens_file_conflict(settings: Settings) -> str | None:
    """Why these settings would send a proxy access token to GitLab, or None if they do not."""
    if settings.access.tokens_file and settings.upstream.credentials != "inject":
        return (
            "access.tokens_file: needs upstream.credentials = 'inject'; clients' Authorization "
            "then carries the proxy's access token, which must never go to GitLab"
        )
    return None


def for_warming(settings: Settings) -> Settings:
    """The warm-up authenticates as the proxy: there is no client to pass credentials on. Its
    listener is on loopback for pip alone, so the access tokens that guard `serve` do not apply."""
    return dataclasses.replace(
        settings,
        upstream=dataclasses.replace(settings.upstream, credentials="inject"),
        access=dataclasses.replace(settings.access, tokens_file=""),
    )


def own_upload_refused(status: int, message: str, *, is_client: bool) -> ProxyError | None:
    """GitLab refusing an upload made with the proxy's own token is the operator's problem."""
    if is_client or not refuses_credentials(status, message):
        return None
    return UpstreamError(
        f"GitLab refused the proxy's credentials for the upload ({status}: {message}); "
        "check upstream.token"
    )


@dataclass(frozen=True, slots=True)
class Acting:
    """The credential a request goes upstream with, and whether it is a client's own (then
    GitLab's answers to it are remembered per client)."""

    authorization: str | None = field(repr=False)
    as_client: bool


@dataclass(frozen=True, slots=True)
class Trust:
    """What a caller may take from the page cache for one scope, given GitLab's last word."""

    # Cached copies (memory, another worker's stored copy) may be served to this caller.
    cached: bool
    # The caller reads the scope's shared view, not a private per-credential one.
    shared: bool

    @property
    def may_use_stored(self) -> bool:
        """Only a shared view this caller may see from the cache falls back to a stored copy."""
        return self.cached and self.shared

    def flight(self, key: str, caller_key: str | None) -> str:
        """The single-flight key: an untrusted client asks GitLab itself, never riding on
        another client's answer."""
        return key if self.cached else f"{key}|{caller_key}"

    def failing(self, key: str, caller_key: str | None) -> str:
        """The key of GitLab's failures: one for a credential (a per-user 429, a 500 to one
        token) is that credential's, and another's request still goes to GitLab."""
        return key if caller_key is None else f"{key}|{caller_key}"


def page_trust(*, is_client: bool, decided: bool, shared: bool) -> Trust:
    """The proxy's own token reads any cached copy; a client's own credentials read one only
    with GitLab's recent yes to that client (`decided`) for the scope."""
    return Trust(cached=not is_client or decided, shared=shared)


def page_verdict(
    status: int, message: str, *, redirected: bool, index: bool
) -> tuple[int, str] | None:
    """What GitLab's answer to a page says about the caller's credentials in its scope: a yes
    (200, or forwarding of a package page), a no, or nothing (None).

    A 404 for a package page may just mean no such package; for the index it is a no.
    """
    if status == 200 or (redirected and not index):
        return 200, "200 OK"
    if refuses_credentials(status, message) or (status == 404 and index):
        return status, message
    return None


class CredentialPolicy:
    """The credential rules that depend on the `[upstream]` settings."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings

    @property
    def injects(self) -> bool:
        """Every read goes upstream with the proxy's own credentials (or none)."""
        return self.settings.credentials == "inject"

    @property
    def injected_authorization(self) -> str | None:
        """The proxy's own Basic credentials, when it has a token."""
        if not self.settings.token:
            return None
        pair = f"{self.settings.username}:{self.settings.token}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    @property
    def rest_authorization(self) -> str:
        """The credential for GitLab's REST API (upload times): the proxy's own token as
        `Private-Token`, in every credentials mode (ask `rest_unusable` first).

        Never a client's, in passthrough mode neither: the times are facts about files, stored
        once for everyone; the REST API takes neither Basic nor deploy tokens, which is what
        pip users mostly hold; and a client's credential goes only where its request goes.
        """
        return f"Private-Token {self.settings.token}"

    @property
    def rest_unusable(self) -> str | None:
        """Why the proxy cannot call the REST API at all, or None if it may try."""
        if not self.settings.token:
            return (
                "upstream.token is not set, and the Packages API is asked with the proxy's "
                "own token only, never a client's"
            )
        if self.settings.username == JOB_TOKEN_USER:
            return (
                f"{self.token_setting} is a CI job token (username {JOB_TOKEN_USER}), which "
                "GitLab takes only as Basic on the registry routes, not on the REST API"
            )
        return None

    @property
    def uploads_inject(self) -> bool:
        """Uploads go with the proxy's own credentials, not the client's."""
        return self.settings.upload_credentials == "inject"

    def carries_own(self, authorization: str | None, *, to_origin: bool) -> bool:
        """Whether a request to GitLab carried the proxy's own credentials (or, in inject mode
        without a token, none where the proxy's would have gone): GitLab's answer judges them."""
        if not to_origin or authorization != self.injected_authorization:
            return False
        return bool(self.settings.token) or self.injects

    def blames_own_token(self, *, to_origin: bool) -> bool:
        """Whether a 401/403 from the origin counts as a refusal of the proxy's credentials in
        the upstream failure metrics (inject mode: every read carries them)."""
        return to_origin and self.injects

    def refusal_is_operators(self, authorization: str | None) -> bool:
        """A refusal of the proxy's own token is the operator's problem; of a client's, the
        client's."""
        return self.injects or authorization in (None, self.injected_authorization)

    @property
    def token_setting(self) -> str:
        """The setting an operator fixes when GitLab refuses the proxy's credentials."""
        if not self.settings.token:
            return "upstream.token (not set)"
        return "upstream.token_file" if self.settings.token_file else "upstream.token"

    def reads_as(self, client: Callable[[], str | None]) -> Acting | None:
        """Whom a read acts as, by `upstream.credentials`; None: passthrough without credentials.

        `client()` reads the client's credential; in inject mode it is not read at all, so it is
        not judged either. In prefer-client mode a caller without one rides on the proxy's
        token, judged by GitLab like a client, since the cache also holds what clients' own
        credentials fetched.
        """
        if self.injects:
            return Acting(self.injected_authorization, as_client=False)
        credential = client()
        if credential is not None:
            return Acting(credential, as_client=True)
        if self.settings.credentials == "passthrough":
            return None
        return Acting(self.injected_authorization, as_client=True)

    def uploads_as(self, client: Callable[[], str | None]) -> Acting | None:
        """Whom an upload acts as: the client, unless `upload_credentials = "inject"`."""
        if self.uploads_inject:
            return Acting(self.injected_authorization, as_client=False)
        credential = client()
        return None if credential is None else Acting(credential, as_client=True)

    def upload_refusal(
        self, authorization: str | None, is_client: bool, access: AccessSettings
    ) -> ProxyError | None:
        """Why an upload may not go upstream with these credentials, or None if it may."""
        if authorization is None:
            return UpstreamError("uploads need a token: set upstream.token or upload_credentials")
        if access.tokens_file and is_client:
            # The client's Authorization carries the proxy's access token, not a GitLab one.
            return Forbidden(
                "uploads through a proxy with access.tokens_file need "
                "upstream.upload_credentials = 'inject'"
            )
        return None

    def forwarded_file_authorization(
        self, authorization: str | None, *, on_origin: bool
    ) -> str | None:
        """The credentials for a forwarded file: GitLab's Dependency Firewall route (on the
        origin) judges the client's own; a public index's file gets none."""
        return authorization if on_origin else None

    def unready_when_refused(self, *, nothing_cached: bool) -> bool:
        """A refused token makes the proxy unready only when it injects and has nothing cached:
        cached content still serves, and with nothing cached an inject-mode proxy serves nothing."""
        return self.injects and nothing_cached
