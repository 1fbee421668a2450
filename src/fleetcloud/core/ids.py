"""Snowflake ids: 64-bit integers that sort by time.

Layout, most significant bit first::

    0 | 41 bits: milliseconds since EPOCH_MS | 10 bits: node | 12 bits: sequence

The millisecond timestamp is recoverable from any id with ``timestamp_ms(id)``, which is
what lets ``before``/``after`` filters take ids and times interchangeably.
"""

from __future__ import annotations

import os
import threading
import time

EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
NODE_BITS = 10
SEQUENCE_BITS = 12
MAX_NODE = (1 << NODE_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
TIMESTAMP_SHIFT = NODE_BITS + SEQUENCE_BITS


def timestamp_ms(snowflake: int) -> int:
    """The Unix time in milliseconds at which ``snowflake`` was made."""
    return (snowflake >> TIMESTAMP_SHIFT) + EPOCH_MS


def lowest_id_at(ms: int) -> int:
    """The smallest id that any generator can give for Unix time ``ms``."""
    return max(ms - EPOCH_MS, 0) << TIMESTAMP_SHIFT


class SnowflakeGenerator:
    """Makes unique, time-ordered ids; safe to share between threads."""

    def __init__(self, node: int | None = None) -> None:
        self.node = (os.getpid() if node is None else node) & MAX_NODE
        self._lock = threading.Lock()
        self._last_ms = 0
        self._sequence = 0
        self._backdated: dict[int, int] = {}

    def next_id(self) -> int:
        with self._lock:
            now = int(time.time() * 1000)
            if now <= self._last_ms:
                now = self._last_ms
                self._sequence = (self._sequence + 1) & MAX_SEQUENCE
                if self._sequence == 0:  # 4096 ids in one millisecond: borrow the next one
                    now += 1
            else:
                self._sequence = 0
            self._last_ms = now
            return self._compose(now, self._sequence)

    def next_ids(self, count: int) -> list[int]:
        """``count`` ids as ``next_id`` would give them one by one, for one lock."""
        with self._lock:
            now = int(time.time() * 1000)
            if now <= self._last_ms:
                now, sequence = self._last_ms, self._sequence
            else:
                sequence = -1
            ids = []
            for _ in range(count):
                sequence += 1
                if sequence > MAX_SEQUENCE:  # as next_id: borrow the next millisecond
                    now, sequence = now + 1, 0
                ids.append(self._compose(now, sequence))
            if ids:
                self._last_ms, self._sequence = now, sequence
            return ids

    def id_at(self, ms: int) -> int:
        """An id stamped with a caller-given time (a message's own ``ts``).

        Ids for the same millisecond differ in their sequence bits; past 4096 of them the
        sequence wraps, and the store's primary key turns a clash into a retry.
        """
        if ms >= int(time.time() * 1000) - 1 and ms <= self._last_ms + 1:
            return self.next_id()
        with self._lock:
            sequence = self._backdated.get(ms, -1) + 1
            if len(self._backdated) > 4096:
                self._backdated.clear()
            self._backdated[ms] = sequence
            return self._compose(ms, sequence & MAX_SEQUENCE)

    def _compose(self, ms: int, sequence: int) -> int:
        return ((ms - EPOCH_MS) << TIMESTAMP_SHIFT) | (self.node << SEQUENCE_BITS) | sequence


_default = SnowflakeGenerator()


def new_id() -> int:
    """A fresh snowflake id from this process's generator."""
    return _default.next_id()


def new_ids(count: int) -> list[int]:
    """``count`` fresh ids, in order, from this process's generator."""
    return _default.next_ids(count)


def id_at(ms: int) -> int:
    """A snowflake id stamped with the Unix time ``ms``."""
    return _default.id_at(ms)
