"""Who may use the proxy at all (`[access] tokens_file`) and which scopes it serves (`allow`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from cachetools import TTLCache

from .auth import parse_basic
from .config import AccessSettings, ConfigError
from .errors import NotFound, ProxyChallenge, ProxyError, TooManyRequests
from .scope import Scope

SCHEME = "scrypt"
# scrypt with N=2^14, r=8 costs about 16 MiB and tens of milliseconds: slow for a guesser,
# and paid once per client per REMEMBER_SECONDS thanks to the cache below.
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
REMEMBER_SECONDS = 300.0
# Token checks waiting or running, in all and per client address. Past either bound a client is
# told to come back (429) instead of queueing, and client addresses take turns at the scrypt
# slots, a newly waiting one first: a flood keeps a new right token from another address
# waiting for about the checks already running, not for the flood's.
SCRYPT_SLOTS = 2
MAX_PENDING_CHECKS = 16
MAX_PENDING_PER_ADDRESS = 4
REMEMBERED_TOKENS = 10_000
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


@dataclass(slots=True)
class _Check:
    """One presented credential waiting for, or running, its scrypt check."""

    key: str
    token: str = field(repr=False)
    address: str
    verdict: asyncio.Future[bool]


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
        # Keyed hashes of presented credentials, so scrypt runs once per client. Right and wrong
        # ones are kept apart: a flood of wrong tokens cannot push a right one out.
        self._good: TTLCache[str, bool] = TTLCache(
            maxsize=REMEMBERED_TOKENS, ttl=REMEMBER_SECONDS, timer=time.monotonic
        )
        self._bad: TTLCache[str, bool] = TTLCache(
            maxsize=REMEMBERED_TOKENS, ttl=REMEMBER_SECONDS, timer=time.monotonic
        )
        # One check per presented credential at a time, however many requests carry it.
        self._checks: dict[str, _Check] = {}
        # Waiting checks per client address; the first address in the dict has the next turn.
        self._waiting: dict[str, deque[_Check]] = {}
        # Each scrypt takes 16 MiB; a flood of wrong tokens must not take all memory and CPU.
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.pending_by_address: Counter[str] = Counter()
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
            await self._check_token(request.headers.get(hdrs.AUTHORIZATION), request.remote or "")
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

    @property
    def pending(self) -> int:
        """Token checks waiting for or running scrypt."""
        return len(self._checks)

    async def _check_token(self, header: str | None, address: str) -> None:
        if not header:
            raise ProxyChallenge("401 Unauthorized", headers={hdrs.WWW_AUTHENTICATE: CHALLENGE})
        token = parse_basic(header).password
        key = hmac.new(self._secret, header.encode(), hashlib.sha256).hexdigest()
        if key in self._good:
            return
        if key in self._bad:
            raise ProxyChallenge("401 Unauthorized", headers={hdrs.WWW_AUTHENTICATE: CHALLENGE})
        check = self._checks.get(key)
        if check is None:
            if self.pending_by_address[address] >= MAX_PENDING_PER_ADDRESS or (
                self.pending >= MAX_PENDING_CHECKS and not self._make_room_for(address)
            ):
                raise _come_back()
            check = self._submit(key, token, address)
        # Shielded: a client that leaves does not cancel what others carrying its token wait on.
        if not await asyncio.shield(check.verdict):
            raise ProxyChallenge("401 Unauthorized", headers={hdrs.WWW_AUTHENTICATE: CHALLENGE})

    def _make_room_for(self, address: str) -> bool:
        """With the queue full, drop the newest waiting check of the address holding the most,
        if that is at least two more than `address` holds: so the queue is shared out evenly."""
        busiest = max(self._waiting, key=self.pending_by_address.__getitem__, default=None)
        if busiest is None or (
            self.pending_by_address[busiest] < self.pending_by_address[address] + 2
        ):
            return False
        queue = self._waiting[busiest]
        dropped = queue.pop()
        if not queue:
            del self._waiting[busiest]
        self._forget(dropped)
        dropped.verdict.set_exception(_come_back())
        return True

    def _submit(self, key: str, token: str, address: str) -> _Check:
        check = _Check(key, token, address, asyncio.get_running_loop().create_future())
        # Retrieved here too, so a check whose clients all left logs no "never retrieved".
        check.verdict.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._checks[key] = check
        self.pending_by_address[address] += 1
        if address in self._waiting:
            self._waiting[address].append(check)
        else:
            # An address with nothing waiting goes first: the others have had their turns.
            self._waiting = {address: deque([check]), **self._waiting}
        self._start_next()
        return check

    def _start_next(self) -> None:
        """Start waiting checks while a scrypt slot is free, one address after another."""
        while self._running < SCRYPT_SLOTS and self._waiting:
            address, queue = next(iter(self._waiting.items()))
            check = queue.popleft()
            # To the back of the line, behind every other address that is waiting.
            del self._waiting[address]
            if queue:
                self._waiting[address] = queue
            self._running += 1
            task = asyncio.create_task(self._run(check))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, check: _Check) -> None:
        try:
            verdict = await asyncio.to_thread(_any_match, self.hashes, check.token)
            (self._good if verdict else self._bad)[check.key] = True
            check.verdict.set_result(verdict)
        except Exception as e:
            check.verdict.set_exception(e)
        finally:
            if not check.verdict.done():
                check.verdict.cancel()
            self._running -= 1
            self._forget(check)
            self._start_next()

    def _forget(self, check: _Check) -> None:
        del self._checks[check.key]
        self.pending_by_address[check.address] -= 1
        if self.pending_by_address[check.address] <= 0:
            del self.pending_by_address[check.address]

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


def _come_back() -> TooManyRequests:
    return TooManyRequests(
        "too many token checks are waiting; retry in a second", headers={hdrs.RETRY_AFTER: "1"}
    )


def _any_match(hashes: Sequence[TokenHash], token: str) -> bool:
    return any(h.matches(token) for h in hashes)


def access_middleware(guard: AccessGuard) -> Middleware:
    """The middleware that runs `guard.check` before every handler."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        await guard.check(request)
        return await handler(request)

    return middleware
