"""The server-wide session registry: a byte cap with least-recently-used eviction."""

from __future__ import annotations

import pytest

from longlive_core.registry import SessionEvictedError, SessionRegistry, SessionTooLargeError, UnknownSessionError


def test_the_least_recently_used_session_goes_and_says_so():
    registry = SessionRegistry(cap_bytes=100)
    registry.get_or_create("a", lambda: "A", lambda _: 40)
    registry.get_or_create("b", lambda: "B", lambda _: 40)
    assert registry.get("a") == "A"  # a is now the more recent
    registry.get_or_create("c", lambda: "C", lambda _: 40)
    assert [k for k, _ in registry.items()] == ["a", "c"]
    with pytest.raises(SessionEvictedError, match="session 'b' was evicted to stay under the memory cap"):
        registry.get("b")
    with pytest.raises(UnknownSessionError, match="no session 'd'"):
        registry.get("d")


def test_a_session_larger_than_the_whole_cap_is_refused_and_evicts_nothing():
    registry = SessionRegistry(cap_bytes=2**30)
    registry.get_or_create("small", lambda: "S", lambda _: 2**20)
    with pytest.raises(SessionTooLargeError, match=r"session 'huge' needs 3.00 GiB of cache, more than the whole "
                                                   r"session cap of 1.00 GiB \(LONGLIVE_SESSION_CAP_GB\)"):
        registry.get_or_create("huge", lambda: "H", lambda _: 3 * 2**30)
    assert [k for k, _ in registry.items()] == ["small"]
    with pytest.raises(UnknownSessionError):
        registry.get("huge")
