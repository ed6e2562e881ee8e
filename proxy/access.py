"""Who may use the proxy at all (`[access] tokens_file`) and which scopes it serves (`allow`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from cachetools import TTLCache

from .auth import parse_basic
from .config import AccessSettings, ConfigError
from .errors import Handler, NotFound, ProxyError, Unauthorized
from .scope import Scope

SCHEME = "scrypt"
# scrypt with N=2^14, r=8 costs about 16 MiB and tens of milliseconds: slow for a guesser,
# and paid once per client per REMEMBER_SECONDS thanks to the cache below.
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
REMEMBER_SECONDS = 300.0
CHALLENGE = 'Basic realm="gitlab-pypi-proxy"'
# Liveness and readiness probes come from orchestrators that hold no token.
OPEN_PATHS = frozenset({"/-/health", "/-/ready"})


@dataclass(frozen=True, slots=True)
class TokenHash:
    """One line of the tokens file: scrypt parameters, salt and derived key."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes = field(repr=False)

    def matches(self, token: str) -> bool:
        derived = hashlib.scrypt(
            token.encode(),
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=MAX_SCRYPT_MEMORY,
            dklen=len(self.key),
        )
        return hmac.compare_digest(derived, self.key)

    def line(self) -> str:
        salt = base64.b64encode(self.salt).decode()
        key = base64.b64encode(self.key).decode()
        return f"{SCHEME}${self.n}${self.r}${self.p}${salt}${key}"


def hash_token(token: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """The tokens-file line for `token`, with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(
        token.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAX_SCRYPT_MEMORY, dklen=KEY_BYTES
    )
    return TokenHash(n, r, p, salt, key).line()


def parse_token_line(line: str) -> TokenHash:
    """`scrypt$N$r$p$salt$key` (base64), as `hash_token` writes it; ValueError otherwise."""
    parts = line.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("expected scrypt$N$r$p$salt$key")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("parameters or base64 are malformed") from None
    if (
        n < 2
        or n & (n - 1)
        or not 0 < r <= 64
        or not 0 < p <= 16
        or 128 * n * r > MAX_SCRYPT_MEMORY
    ):
        raise ValueError("scrypt parameters out of range")
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("salt or key too short")
    return TokenHash(n, r, p, salt, key)


def load_tokens(path: Path) -> tuple[TokenHash, ...]:
    """Every token hash in the file; blank lines and `#` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"access.tokens_file: cannot read {str(path)!r} ({e})") from None
    hashes = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            hashes.append(parse_token_line(line))
        except ValueError as e:
            raise ConfigError(f"access.tokens_file: line {number}: {e}") from None
    if not hashes:
        raise ConfigError("access.tokens_file: no token hashes in the file")
    return tuple(hashes)


def _allow_entry(entry: str) -> tuple[str, str]:
    kind, _, raw_id = entry.partition("/")
    return kind, unquote(raw_id).lower()


class AccessGuard:
    """Checks the proxy's own Basic tokens and the allowed scopes, before any handler runs."""

    def __init__(self, settings: AccessSettings) -> None:
        self.hashes: tuple[TokenHash, ...] = ()
        if settings.tokens_file:
            self.hashes = load_tokens(Path(settings.tokens_file))
        self.allow = tuple(_allow_entry(e) for e in settings.allow)
        self._secret = secrets.token_bytes(32)
        # Keyed hashes of presented credentials and the verdict, so scrypt runs once per client.
        self._verdicts: TTLCache[str, bool] = TTLCache(
            maxsize=10_000, ttl=REMEMBER_SECONDS, timer=time.monotonic
        )
        # Each scrypt takes 16 MiB; a flood of wrong tokens must not take all memory and CPU.
        self._slots = asyncio.Semaphore(2)
        self.ops_hashes = tuple(
            _ops_hash(number, line) for number, line in enumerate(settings.ops_tokens, start=1)
        )
        self._ops_verdicts: TTLCache[str, bool] = TTLCache(
            maxsize=10_000, ttl=REMEMBER_SECONDS, timer=time.monotonic
        )
        self._ops_slot = asyncio.Lock()

    async def check(self, request: web.Request) -> None:
        """Raise 401 without a known token, 404 for a scope outside `allow`."""
        if request.path in OPEN_PATHS:
            return
        if self.hashes:
            await self._check_token(request.headers.get(hdrs.AUTHORIZATION))
        # Every route with an {id} is a scope's, however its prefix was spelled.
        if (
            self.allow
            and "id" in request.match_info
            and not self.allows(Scope.of_route(request.rel_url.raw_path))
        ):
            # GitLab's own answer for what does not exist: nothing to learn from it.
            raise NotFound("404 Not Found")

    def allows(self, scope: Scope) -> bool:
        """`groups/G` covers G and every subgroup and project below G's path."""
        ident = unquote(scope.raw_id).lower()
        for kind, allowed in self.allow:
            if kind == scope.kind and ident == allowed:
                return True
            if kind == "groups" and not allowed.isdigit() and ident.startswith(allowed + "/"):
                return True
        return False

    async def _check_token(self, header: str | None) -> None:
        if not header:
            raise Unauthorized("401 Unauthorized", headers={hdrs.WWW_AUTHENTICATE: CHALLENGE})
        token = parse_basic(header).password
        key = hmac.new(self._secret, header.encode(), hashlib.sha256).hexdigest()
        verdict = self._verdicts.get(key)
        if verdict is None:
            async with self._slots:
                verdict = await asyncio.to_thread(_any_match, self.hashes, token)
            self._verdicts[key] = verdict
        if not verdict:
            raise Unauthorized("401 Unauthorized", headers={hdrs.WWW_AUTHENTICATE: CHALLENGE})

    async def is_operator(self, header: str | None) -> bool:
        """Whether `header` (Basic with any user, or Bearer) carries one of access.ops_tokens."""
        if not self.ops_hashes or not header:
            return False
        key = hmac.new(self._secret, header.encode(), hashlib.sha256).hexdigest()
        verdict = self._ops_verdicts.get(key)
        if verdict is not None:
            return verdict
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            token = value.strip()
        else:
            try:
                token = parse_basic(header).password
            except ProxyError:
                return False
        # One check at a time and no queue: a flood of guesses gets the public page at once.
        if self._ops_slot.locked():
            return False
        async with self._ops_slot:
            verdict = await asyncio.to_thread(_any_match, self.ops_hashes, token)
        self._ops_verdicts[key] = verdict
        return verdict


def _ops_hash(number: int, line: str) -> TokenHash:
    try:
        return parse_token_line(line.strip())
    except ValueError as e:
        raise ConfigError(f"access.ops_tokens: entry {number}: {e}") from None


def _any_match(hashes: Sequence[TokenHash], token: str) -> bool:
    return any(h.matches(token) for h in hashes)


def access_middleware(guard: AccessGuard) -> Middleware:
    """The middleware that runs `guard.check` before every handler."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        await guard.check(request)
        return await handler(request)

    return middleware
