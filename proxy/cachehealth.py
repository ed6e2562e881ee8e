"""Whether the cache directory takes writes now; while it does not, files pass straight through."""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Callable

from .blobs import BlobStore

log = logging.getLogger(__name__)

# How long a write failure keeps fills off the disk before the directory is probed again.
RECHECK_SECONDS = 10.0
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


def describe(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    return f"cache directory is not writable ({error.strerror or type(error).__name__})"


class CacheHealth:
    """Owns the cache's write state: set by failed writes, cleared by a successful probe."""

    def __init__(self, blobs: BlobStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.blobs = blobs
        self.clock = clock
        self.problem: str | None = None
        self._recheck_at = 0.0
        self._warn = Throttled(log, clock=clock)

    def failed(self, error: OSError) -> None:
        self.problem = describe(error)
        self._recheck_at = self.clock() + RECHECK_SECONDS
        self._warn.log(
            logging.WARNING,
            "%s: serving files as a pass-through, without caching them",
            self.problem,
        )

    def writable(self) -> bool:
        """Whether a fill may use the disk now; probes again once RECHECK_SECONDS have passed."""
        if self.problem is None:
            return True
        if self.clock() < self._recheck_at:
            self._warn.log(
                logging.WARNING,
                "%s: serving files as a pass-through, without caching them",
                self.problem,
            )
            return False
        error = self.blobs.write_problem()
        # An empty probe file fits on a full disk; the reserve says whether it is still full.
        if error is None and not self._has_reserve():
            error = OSError(errno.ENOSPC, "No space left on device")
        if error is not None:
            self.failed(error)
            return False
        log.info("cache directory writable again (was: %s)", self.problem)
        self.problem = None
        return True

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
            return True
        self.failed(OSError(errno.ENOSPC, "No space left on device"))
        return False
