"""The outbox: bus events written in the same transaction as the data they describe.

Rows are append-only batches (one per transaction) of ``[topic, key, value]`` triples.
The embedded bus reads them as its durable log and remembers, per consumer group, the
last row it finished; the Kafka bus relays rows to the broker and then deletes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleetcloud.core import jsonish
from fleetcloud.core.types import Event
from fleetcloud.store.ops import Emit, Execute, Fetch, Work


def encode(events: Sequence[Event]) -> bytes:
    return jsonish.dumps([[e.topic, e.key, e.value] for e in events])


def decode(payload: bytes | memoryview) -> list[Event]:
    return [Event(topic, key, value) for topic, key, value in jsonish.loads(bytes(payload))]


def append(events: Sequence[Event]) -> Work[None]:
    yield Emit(events)


def read_after(position: int, limit: int = 500) -> Work[list[tuple[int, list[Event]]]]:
    rows = yield Fetch(
        "SELECT id, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (position, limit)
    )
    return [(int(row_id), decode(payload)) for row_id, payload in rows]


def last_position() -> Work[int]:
    rows = yield Fetch("SELECT max(id) FROM outbox")
    return int(rows[0][0] or 0)


def delete_through(position: int) -> Work[int]:
    count: int = yield Execute("DELETE FROM outbox WHERE id <= ?", (position,))
    return count


def get_offset(group: str) -> Work[int | None]:
    rows = yield Fetch("SELECT position FROM bus_offsets WHERE group_name = ?", (group,))
    return int(rows[0][0]) if rows else None


def set_offset(group: str, position: int) -> Work[None]:
    yield Execute(
        "INSERT INTO bus_offsets (group_name, position) VALUES (?, ?) "
        "ON CONFLICT (group_name) DO UPDATE SET position = excluded.position",
        (group, position),
    )


def offsets() -> Work[dict[str, int]]:
    rows: list[Any] = yield Fetch("SELECT group_name, position FROM bus_offsets")
    return {str(group): int(position) for group, position in rows}
