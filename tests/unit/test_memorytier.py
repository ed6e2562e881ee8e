"""The memory tier: small bodies only, least recently used out first, off at size 0."""

from __future__ import annotations

from proxy.memorytier import MemoryTier


def test_keeps_small_bodies_and_drops_the_least_recent() -> None:
    tier = MemoryTier(size=10, file_max=4)
    assert tier.takes(4) and not tier.takes(5)
    tier.put("a", b"aaaa")
    tier.put("b", b"bbbb")
    assert tier.get("a") == b"aaaa"  # now the most recent
    tier.put("c", b"cccc")
    assert tier.get("b") is None
    assert tier.get("a") == b"aaaa" and tier.get("c") == b"cccc"
    tier.forget("a")
    assert tier.get("a") is None
    tier.forget("a")


def test_size_zero_turns_it_off() -> None:
    tier = MemoryTier(size=0, file_max=256 * 1024)
    assert not tier.takes(1)
