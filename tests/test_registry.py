"""The server-wide session registry: a byte cap with least-recently-used eviction."""

from __future__ import annotations

import pytest

from longlive_core.runtime.registry import SessionEvictedError, SessionRegistry, SessionTooLargeError, UnknownSessionError


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


def test_a_value_is_made_outside_the_lock_and_a_second_caller_waits_for_it():
    """Making a session compiles and captures for tens of seconds: the HTTP routes must still read the registry, and
    a second run with the same id must get the same value, made once."""
    import threading

    registry = SessionRegistry(cap_bytes=100)
    started, release, made = threading.Event(), threading.Event(), []

    def make():
        started.set()
        release.wait(10)
        made.append(object())
        return made[-1]

    results = []
    first = threading.Thread(target=lambda: results.append(registry.get_or_create("a", make, lambda v: 1)))
    first.start()
    assert started.wait(10)
    assert registry.items() == []  # answered while "a" is being made
    second = threading.Thread(target=lambda: results.append(registry.get_or_create("a", make, lambda v: 1)))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert len(made) == 1 and sorted(created for _, created in results) == [False, True]
    assert all(value is made[0] for value, _ in results)


def test_values_are_closed_when_the_registry_drops_them():
    class Value:
        closed = 0

        def close(self):
            self.closed += 1

    registry = SessionRegistry(cap_bytes=10)
    a, b, c = Value(), Value(), Value()
    registry.put("a", a, 6)
    registry.put("b", b, 6)  # evicts a
    registry.delete("b")
    registry.put("c", c, 1)
    registry.clear()
    assert (a.closed, b.closed, c.closed) == (1, 1, 1)


def test_a_delete_of_one_value_keeps_another_put_under_its_key_meanwhile():
    """DELETE looks a session up, then frees it: a value put under the key in between is not the one it meant."""
    registry = SessionRegistry(cap_bytes=100)
    first, second = object(), object()
    registry.put("a", first, 1)
    registry.put("a", second, 1)
    assert not registry.delete("a", only=first) and registry.holds("a", second) and "a" in registry
    assert registry.delete("a", only=second) and "a" not in registry
