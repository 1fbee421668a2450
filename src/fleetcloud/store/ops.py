"""Database work written once for both databases, without doing any I/O.

A unit of work is a generator that yields ``Op`` values and receives each one's result::

    def channel_count(agent_id: int) -> Work[int]:
        rows = yield Fetch("SELECT count(*) FROM channels WHERE agent_id = ?", (agent_id,))
        return rows[0][0]

Each store runs work with its own driver: SQLite synchronously in its writer or reader
threads, PostgreSQL with ``await``. SQL uses ``?`` placeholders; the PostgreSQL driver
rewrites them to ``$1, $2, …``. Keep SQL to what both dialects share.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fleetcloud.core.types import Event

T = TypeVar("T")

Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Run a query; the result is a list of row tuples."""

    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class Execute:
    """Run a statement; the result is the number of rows it changed."""

    sql: str
    params: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class ExecuteMany:
    """Run a statement once per parameter row; the result is None."""

    sql: str
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Emit:
    """Queue bus events; they are written to the outbox in the same transaction as the
    work, and dropped if the work fails. The result is None."""

    events: Sequence[Event]


Op = Fetch | Execute | ExecuteMany | Emit
Work = Generator[Op, Any, T]


def placeholders(count: int) -> str:
    return ", ".join("?" * count)
