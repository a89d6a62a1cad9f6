"""Sessions kept between queue runs: a registry with a memory cap and least-recently-used eviction."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from ..errors import LongLiveError

log = logging.getLogger(__name__)


class SessionEvictedError(LongLiveError, KeyError):
    """The session was dropped to make room; its video cannot continue."""

    def __str__(self) -> str:
        return self.args[0]


class SessionTooLargeError(LongLiveError):
    """A session that alone would exceed the registry's cap (it would evict every other one)."""


class UnknownSessionError(LongLiveError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


@dataclasses.dataclass
class Entry:
    value: Any
    nbytes: int
    created: float = dataclasses.field(default_factory=time.time)
    used: float = dataclasses.field(default_factory=time.time)


class SessionRegistry:
    """Named live objects with a total byte cap; the least recently used go first. A value with a close() method is
    closed when the registry drops it. The lock guards only the registry's own bookkeeping: a value is made outside
    it (making one compiles and captures for tens of seconds, while the HTTP routes read the registry)."""

    def __init__(self, cap_bytes: int):
        self.cap = cap_bytes
        self._items: "collections.OrderedDict[str, Entry]" = collections.OrderedDict()
        self._evicted: set[str] = set()
        self._making: dict[str, threading.Event] = {}  # keys whose value is being made, set when it is done
        self._lock = threading.RLock()

    def get(self, key: str) -> Any:
        with self._lock:
            if key in self._items:
                entry = self._items[key]
                entry.used = time.time()
                self._items.move_to_end(key)
                return entry.value
            if key in self._evicted:
                raise SessionEvictedError(f"session '{key}' was evicted to stay under the memory cap; its video "
                                          f"cannot continue: reset it (or use a new session id) to start again")
            raise UnknownSessionError(f"no session '{key}'; run the LongLive sampler with this session id first")

    def get_or_create(self, key: str, make: Callable[[], Any], nbytes: Callable[[Any], int]) -> tuple[Any, bool]:
        """Returns (value, created). A key that was evicted raises SessionEvictedError. A caller asking for a key
        that another is making waits for it."""
        while True:
            with self._lock:
                try:
                    return self.get(key), False
                except UnknownSessionError:
                    pass
                making = self._making.get(key)
                if making is None:
                    self._making[key] = threading.Event()
                    break
            making.wait()
        try:
            value = make()
            size = nbytes(value)
            if size > self.cap:
                _close(value)
                raise SessionTooLargeError(f"session '{key}' needs {size / 2**30:.2f} GiB of cache, more than the whole "
                                           f"session cap of {self.cap / 2**30:.2f} GiB (LONGLIVE_SESSION_CAP_GB); raise "
                                           f"the cap, or make the video smaller or its window shorter")
            self.put(key, value, size)
            return value, True
        finally:
            with self._lock:
                self._making.pop(key).set()

    def put(self, key: str, value: Any, nbytes: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None and old.value is not value:
                _close(old.value)
            self._evicted.discard(key)
            self._items[key] = Entry(value, nbytes)
            self._evict(keep=key)

    def _evict(self, keep: str) -> None:
        while sum(e.nbytes for e in self._items.values()) > self.cap and len(self._items) > 1:
            oldest = next(k for k in self._items if k != keep)
            _close(self._items.pop(oldest).value)
            self._evicted.add(oldest)
            log.warning("evicted LongLive session '%s' (memory cap %.1f GiB)", oldest, self.cap / 2**30)

    def delete(self, key: str, only: Any = None) -> bool:
        """Frees a session (where `only` is given, only if it is that value); a later run with the same id starts a
        new video."""
        with self._lock:
            if only is not None and not self.holds(key, only):
                return False
            self._evicted.discard(key)
            entry = self._items.pop(key, None)
        if entry is not None:
            _close(entry.value)
        return entry is not None

    def forget_evicted(self, key: str) -> bool:
        """Clears an evicted id's mark (a later run with it starts a new video); returns whether it had one."""
        with self._lock:
            was = key in self._evicted
            self._evicted.discard(key)
            return was

    def __contains__(self, key: str) -> bool:
        """Whether a value is held, or being made, under `key`."""
        with self._lock:
            return key in self._items or key in self._making

    def holds(self, key: str, value: Any) -> bool:
        """Whether `value` is the one held under `key` (not deleted, evicted or replaced meanwhile)."""
        with self._lock:
            entry = self._items.get(key)
            return entry is not None and entry.value is value

    def items(self) -> list[tuple[str, Entry]]:
        with self._lock:
            return list(self._items.items())

    def clear(self) -> None:
        with self._lock:
            entries = list(self._items.values())
            self._items.clear()
            self._evicted.clear()
        for entry in entries:
            _close(entry.value)


def _close(value: Any) -> None:
    close = getattr(value, "close", None)
    if close is not None:
        close()
