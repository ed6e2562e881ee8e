"""The small-file memory tier: verified bodies of small blobs, so the common hit reads no disk."""

from __future__ import annotations

from cachetools import LRUCache


class MemoryTier:
    """Least recently used small bodies, up to `size` bytes in all and `file_max` each."""

    def __init__(self, size: int, file_max: int) -> None:
        self._bodies: LRUCache[str, bytes] = LRUCache(maxsize=max(1, size), getsizeof=len)
        # The LRU refuses a body larger than itself (size 0 turns the tier off).
        self.file_max = min(file_max, size)

    def takes(self, size: int) -> bool:
        """Whether a blob of `size` bytes is served from here."""
        return size <= self.file_max

    def get(self, sha256: str) -> bytes | None:
        return self._bodies.get(sha256)

    def put(self, sha256: str, body: bytes) -> None:
        self._bodies[sha256] = body

    def forget(self, sha256: str) -> None:
        self._bodies.pop(sha256, None)
