"""Clients' credentials as they arrive, and GitLab's remembered yes or no to each client."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import yarl
from aiohttp import hdrs
from cachetools import LRUCache, TTLCache

from .config import UpstreamSettings
from .credentials import (
    TOKEN_HEADERS,
    Acting,
    CredentialPolicy,
    Trust,
    page_trust,
    page_verdict,
    refuses_credentials,
)
from .errors import BadRequest, GitLabChallenge, ProxyError, UpstreamStatus
from .scope import Scope
from .upstream import Upstream

# GitLab's tokens are short, but JWT CI job tokens run to a few hundred bytes; this is generous.
MAX_AUTHORIZATION = 4096
_TOKEN68_RE = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")
# GitLab reads this header on its other APIs, never on the PyPI routes.
JOB_TOKEN_HEADER = "Job-Token"
# Bounds on what is remembered: each entry is a few hundred bytes.
MAX_DECISIONS = 100_000
MAX_MEMBERS = 200_000
# Statuses of a file request that settle whether this client may have this file.
_FILE_ALLOWED = (200, 301, 302, 303, 307, 308)
_FILE_REFUSED = (401, 403, 404, 410)


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    """A well-formed Basic Authorization header and its parts; never printed."""

    header: str = field(repr=False)
    username: str = field(repr=False)
    password: str = field(repr=False)


def parse_authorization(raw: str | None) -> str | None:
    """The client's Authorization header if it is well formed, None if absent; else 400.

    Only Basic (what pip, uv and twine send) and Bearer (GitLab OAuth and access tokens) go
    upstream. The messages never repeat what the client sent.
    """
    if raw is None or not raw.strip():
        return None
    if len(raw) > MAX_AUTHORIZATION:
        raise BadRequest(f"Authorization header is longer than {MAX_AUTHORIZATION} bytes")
    scheme, _, value = raw.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        return parse_basic(raw).header
    if scheme.lower() == "bearer":
        if not _TOKEN68_RE.match(value):
            raise BadRequest("Bearer credentials are malformed")
        return f"Bearer {value}"
    raise BadRequest("unsupported Authorization scheme; use Basic (user:token)")


def client_credential(headers: Mapping[str, str]) -> str | None:
    """The client's GitLab credential, in every form GitLab's PyPI routes take; None if none.

    Authorization (Basic or Bearer) first, then GitLab's `Private-Token` and `Deploy-Token`
    headers, held as "<header> <token>" so they go upstream as they came. A `Job-Token` header
    is refused: GitLab would take its caller for anonymous.
    """
    authorization = parse_authorization(headers.get(hdrs.AUTHORIZATION))
    if authorization is not None:
        return authorization
    for name in TOKEN_HEADERS:
        token = headers.get(name, "").strip()
        if not token:
            continue
        if len(token) > MAX_AUTHORIZATION or not _TOKEN68_RE.match(token):
            raise BadRequest(f"{name} header is malformed")
        return f"{name} {token}"
    if headers.get(JOB_TOKEN_HEADER, "").strip():
        raise GitLabChallenge(
            "401 Unauthorized - GitLab ignores the Job-Token header on its PyPI routes; "
            "send the job token as Basic credentials gitlab-ci-token:<token>"
        )
    return None


def parse_basic(raw: str) -> BasicCredentials:
    """Decode `Basic base64(user:password)` strictly: valid base64, UTF-8, a colon."""
    if len(raw) > MAX_AUTHORIZATION:
        raise BadRequest(f"Authorization header is longer than {MAX_AUTHORIZATION} bytes")
    scheme, _, value = raw.strip().partition(" ")
    if scheme.lower() != "basic":
        raise BadRequest("expected Basic credentials (user:token)")
    value = value.strip()
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Basic credentials are not valid base64") from None
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Basic credentials are not UTF-8") from None
    username, colon, password = text.partition(":")
    if not colon:
        raise BadRequest("Basic credentials must be user:token (no colon found)")
    if not password or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadRequest("Basic credentials need a token without control characters")
    return BasicCredentials(f"Basic {value}", username, password)


@dataclass(frozen=True, slots=True)
class Caller:
    """Whom a request acts as upstream: the proxy's own token, or the client's credentials."""

    authorization: str | None = field(repr=False)
    # A keyed hash of the client's credentials; None when the proxy's token is used.
    key: str | None = None

    @property
    def is_client(self) -> bool:
        return self.key is not None

    def view(self, scope: Scope) -> str:
        """Whose copy of a scope's pages this caller reads.

        A project page is the same for everyone GitLab lets in, so it is shared. A group page
        lists only the projects this caller can see, so a client's group pages are its own.
        """
        if self.key is not None and scope.kind == "groups":
            return f"{scope.key}@{self.key[:32]}"
        return scope.key


@dataclass(frozen=True, slots=True)
class Decision:
    """GitLab's answer to one client for one scope (or one file), as a status."""

    status: int
    message: str

    @property
    def allowed(self) -> bool:
        return self.status < 400

    def error(self) -> ProxyError:
        if self.status == 401:
            return GitLabChallenge(self.message)
        return UpstreamStatus(self.status, self.message)


class Gatekeeper:
    """Applies the credential policy per request, and remembers GitLab's answers to clients;
    holds hashes, never a credential."""

    def __init__(
        self,
        settings: UpstreamSettings,
        upstream: Upstream,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.policy = CredentialPolicy(settings)
        # Per process: a key in memory makes the hashes useless to anyone reading them elsewhere.
        self._secret = secrets.token_bytes(32)
        self.decisions: TTLCache[str, Decision] = TTLCache(
            maxsize=MAX_DECISIONS, ttl=settings.auth_ttl, timer=clock
        )
        # (view, sha256) pairs GitLab has listed or served: the file is in that view.
        self.members: LRUCache[tuple[str, str], bool] = LRUCache(maxsize=MAX_MEMBERS)

    def _key(self, authorization: str) -> str:
        return hmac.new(self._secret, authorization.encode(), hashlib.sha256).hexdigest()

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """Who a read acts as (see CredentialPolicy.reads_as); 401 when it needs credentials."""
        return self._caller(self.policy.reads_as(lambda: client_credential(headers)))

    def uploader(self, headers: Mapping[str, str]) -> Caller:
        """Who an upload acts as (see CredentialPolicy.uploads_as); 401 when it needs some."""
        return self._caller(self.policy.uploads_as(lambda: client_credential(headers)))

    def _caller(self, acting: Acting | None) -> Caller:
        if acting is None:
            raise GitLabChallenge()
        if not acting.as_client:
            return Caller(acting.authorization)
        return Caller(acting.authorization, self._key(acting.authorization or ""))

    def _decision_key(self, caller: Caller, *parts: str) -> str:
        assert caller.key is not None
        return hmac.new(
            self._secret, "\0".join((caller.key, *parts)).encode(), hashlib.sha256
        ).hexdigest()

    def decision(self, caller: Caller, scope: Scope) -> Decision | None:
        """GitLab's remembered answer to this client for this scope, if within auth_ttl."""
        return self.decisions.get(self._decision_key(caller, scope.key))

    def refuse_if_refused(self, caller: Caller, scope: Scope) -> None:
        """Raise GitLab's remembered no to this client for this scope, before the cache is read.

        A refused client gets the same answer, from memory and without asking GitLab, whether
        the file it names is cached or not: were only misses sent upstream, the time of the
        answer would tell it what others downloaded. A client with no decision yet is asked
        about at GitLab either way (a HEAD for a cached file, the download itself otherwise).
        """
        decision = self.decision(caller, scope) if caller.is_client else None
        if decision is not None and not decision.allowed:
            raise decision.error()

    def remember(self, caller: Caller, scope: Scope, status: int, message: str) -> None:
        """Remember what GitLab said to this client's own request in this scope."""
        if caller.is_client and self.settings.auth_ttl > 0:
            self.decisions[self._decision_key(caller, scope.key)] = Decision(status, message)

    def page_trust(self, caller: Caller, scope: Scope) -> Trust:
        """What this caller may take from the page cache for this scope; GitLab's remembered no
        to this client is raised. A client's own credentials need GitLab's recent yes."""
        decided = False
        if caller.is_client:
            decision = self.decision(caller, scope)
            if decision is not None and not decision.allowed:
                raise decision.error()
            decided = decision is not None
        shared = caller.view(scope) == scope.key
        return page_trust(is_client=caller.is_client, decided=decided, shared=shared)

    def page_answer(
        self,
        caller: Caller,
        scope: Scope,
        status: int,
        message: str,
        redirected: bool,
        *,
        index: bool,
    ) -> None:
        """Remember what GitLab's answer to a page says of this client's credentials there."""
        verdict = page_verdict(status, message, redirected=redirected, index=index)
        if verdict is not None:
            self.remember(caller, scope, *verdict)

    def listed(self, view: str, sha256s: Iterable[str]) -> None:
        """GitLab listed these files in this view: a client allowed there may have them."""
        for sha256 in sha256s:
            self.members[(view, sha256)] = True

    async def check_cached_file(
        self, caller: Caller, scope: Scope, sha256: str, source_url: yarl.URL
    ) -> None:
        """Raise GitLab's answer unless this client may have this cached file through this scope."""
        if not caller.is_client:
            return
        scope_decision = self.decision(caller, scope)
        if scope_decision is not None and not scope_decision.allowed:
            raise scope_decision.error()
        view = caller.view(scope)
        if scope_decision is not None and self.members.get((view, sha256)):
            return
        file_key = self._decision_key(caller, scope.key, sha256)
        file_decision = self.decisions.get(file_key)
        if file_decision is None:
            file_decision = await self._probe(caller, scope, source_url)
            if self.settings.auth_ttl > 0:
                self.decisions[file_key] = file_decision
        if not file_decision.allowed:
            raise file_decision.error()

    async def _probe(self, caller: Caller, scope: Scope, source_url: yarl.URL) -> Decision:
        """Ask GitLab, with the client's own credentials, whether it would serve this file."""
        status, message, retry_after = await self.upstream.probe(source_url, caller.authorization)
        if status in _FILE_ALLOWED:
            self.remember(caller, scope, 200, "200 OK")
            return Decision(200, "200 OK")
        if refuses_credentials(status, message):
            self.remember(caller, scope, status, message)
        if status in _FILE_REFUSED:
            return Decision(status, message)
        raise self.upstream.error_for(
            status, message, retry_after, authorization=caller.authorization
        )

    def file_answer(
        self, caller: Caller, scope: Scope, sha256: str, error: ProxyError | None
    ) -> None:
        """GitLab's answer to this client's own download of a file: remember it."""
        if not caller.is_client:
            return
        if error is None:
            self.remember(caller, scope, 200, "200 OK")
            self.members[(caller.view(scope), sha256)] = True
        elif error.status in _FILE_REFUSED and self.settings.auth_ttl > 0:
            self.decisions[self._decision_key(caller, scope.key, sha256)] = Decision(
                error.status, error.message
            )
            # A 403 with a reason (a file the firewall blocks) is about this file only.
            if refuses_credentials(error.status, error.message):
                self.remember(caller, scope, error.status, error.message)

    def admission(
        self, caller: Caller, scope: Scope, sha256: str, source: yarl.URL
    ) -> ClientAdmission | None:
        """What the file cache asks before giving this client bytes it did not fetch itself."""
        if not caller.is_client:
            return None
        return ClientAdmission(self, caller, scope, sha256, source)


@dataclass(frozen=True, slots=True)
class ClientAdmission:
    """One client's request for one file in one scope, judged by the gatekeeper."""

    gate: Gatekeeper
    caller: Caller
    scope: Scope
    sha256: str
    source: yarl.URL

    async def admit(self) -> None:
        await self.gate.check_cached_file(self.caller, self.scope, self.sha256, self.source)

    def answered(self, error: ProxyError | None) -> None:
        self.gate.file_answer(self.caller, self.scope, self.sha256, error)
