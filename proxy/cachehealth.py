"""Whether the cache directory takes writes now; while it does not, files pass straight through."""

from __future__ import annotations

import enum
import errno
import logging
import math
import time
from collections.abc import Callable

from .blobs import BlobStore

log = logging.getLogger(__name__)

# Kept free beyond a file about to be cached, for SQLite, logs and the rest of the system.
RESERVE_BYTES = 16 * 1024 * 1024


class Throttled:
    """Log a recurring condition at most once per interval, with a count of the repeats."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last = -math.inf
        self._repeats = 0

    def log(self, level: int, message: str, *args: object) -> None:
        now = self.clock()
        if now - self._last < self.interval:
            self._repeats += 1
            return
        if self._repeats:
            message += f" ({self._repeats} more times since the last such message)"
        self.logger.log(level, message, *args)
        self._last = now
        self._repeats = 0


class CacheMode(enum.Enum):
    """How the cache directory could be opened at start-up (or since)."""

    READ_WRITE = "read-write"
    # Its index and files are served as they are; nothing is written (read-only media).
    READ_ONLY = "read-only"
    # Nothing on disk is used: pages are kept in memory, files pass straight through.
    PASS_THROUGH = "pass-through"


def describe(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    return f"cache directory is not writable ({error.strerror or type(error).__name__})"


class CacheHealth:
    """Owns the cache's write state: its mode since start-up, and the problem set by failed
    writes (or a file finding no room), cleared by a successful probe."""

    def __init__(
        self,
        blobs: BlobStore,
        clock: Callable[[], float] = time.monotonic,
        *,
        recheck: float = 10.0,
    ) -> None:
        self.blobs = blobs
        self.clock = clock
        # How long a write failure keeps fills off the disk before the directory is probed again.
        self.recheck = recheck
        self.mode = CacheMode.READ_WRITE
        self.problem: str | None = None
        # Set when a file found no room: eviction should free `wanted` bytes beyond the reserve
        # (the largest such file since it last ran), and is woken by `on_no_room`.
        self.needs_room = False
        self.wanted = 0
        self.on_no_room: Callable[[], None] | None = None
        self._recheck_at = 0.0
        self._warn = Throttled(log, clock=clock)

    def opened(self, mode: CacheMode, reason: str = "") -> None:
        """How start-up (or a later probe) found the directory; `reason` says why not read-write."""
        self.mode = mode
        if mode is CacheMode.READ_WRITE:
            if self.problem is not None:
                log.info("cache directory writable again (was: %s): caching resumes", self.problem)
            self.problem = None
            self._recheck_at = 0.0
            return
        if mode is CacheMode.READ_ONLY:
            self.problem = f"cache is read-only ({reason})"
        else:
            self.problem = f"cache directory is not writable ({reason})"
        self._warn_pass_through()

    def _warn_pass_through(self) -> None:
        if self.mode is CacheMode.READ_ONLY:
            what = "serving the files and pages it holds, the rest as a pass-through"
        elif self.mode is CacheMode.PASS_THROUGH:
            what = "serving files as a pass-through and keeping pages in memory only"
        else:
            what = "serving files as a pass-through, without caching them"
        self._warn.log(logging.WARNING, "%s: %s", self.problem, what)

    def failed(self, error: OSError) -> None:
        self.problem = describe(error)
        self._recheck_at = self.clock() + self.recheck
        self._warn_pass_through()

    def no_room(self, size: int) -> None:
        """A file of `size` bytes did not fit: eviction should make room for it."""
        self.needs_room = True
        self.wanted = max(self.wanted, size)
        self.failed(OSError(errno.ENOSPC, "No space left on device"))
        if self.on_no_room is not None:
            self.on_no_room()

    def room_made(self) -> None:
        """Eviction freed space for what found none: look again at the next fill."""
        self.needs_room = False
        self.wanted = 0
        self._recheck_at = 0.0

    def writable(self) -> bool:
        """Whether a fill may use the disk now; probes again once `recheck` seconds have passed."""
        if self.mode is not CacheMode.READ_WRITE:
            # The directory is probed (and reopened) by `cacheopen.reopen_when_writable`.
            self._warn_pass_through()
            return False
        if self.problem is None:
            return True
        if self.clock() < self._recheck_at:
            self._warn_pass_through()
            return False
        error = self.blobs.write_problem()
        # An empty probe file fits on a full disk; the reserve says whether it is still full.
        if error is None and not self._has_reserve():
            self.no_room(0)
            return False
        if error is not None:
            self.failed(error)
            return False
        log.info("cache directory writable again (was: %s)", self.problem)
        self.problem = None
        # Space came back by itself: eviction must not go on to make more.
        self.room_made()
        return True

    def free_target(self) -> int:
        """Free bytes eviction should reach now: room for what found none, and the reserve."""
        return self.wanted + RESERVE_BYTES if self.needs_room else 0

    def _has_reserve(self) -> bool:
        try:
            return self.blobs.free_space() >= RESERVE_BYTES
        except OSError:
            return False

    def room_for(self, size: int) -> bool:
        """Whether `size` more bytes fit and leave the reserve free; says so when not."""
        try:
            free = self.blobs.free_space()
        except OSError as e:
            self.failed(e)
            return False
        if free >= size + RESERVE_BYTES:
            if size >= self.wanted:
                self.room_made()  # what eviction was to make room for fits now
            return True
        self.no_room(size)
        return False
