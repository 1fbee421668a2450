"""Channels, their message history and their aggregate (current state).

Publishing appends to history and merge-patches the aggregate in one transaction, and
emits ``MessageCreate`` / ``AggregateUpdate`` events through the outbox with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fleetcloud.core import jsonish
from fleetcloud.core.errors import ApiError, NotFound
from fleetcloud.core.ids import id_at, new_id, new_ids, timestamp_ms
from fleetcloud.core.merge import apply_update, merge_patch
from fleetcloud.core.schemas import validate
from fleetcloud.core.types import CHANNEL_EVENTS, Channel, Event, Message
from fleetcloud.store.agents import now_ms
from fleetcloud.store.ops import Emit, Execute, ExecuteMany, Fetch, Work

CHANNEL_COLUMNS = (
    "id, agent_id, name, is_private, message_schema, aggregate_schema, aggregate, "
    "aggregate_attachments, last_updated"
)
MESSAGE_COLUMNS = "channel_id, id, author_id, data, attachments"
LOOKUP_CHUNK = 200

ChannelKey = tuple[int, str]


@dataclass(slots=True)
class PublishItem:
    agent_id: int
    channel_name: str
    data: Any
    author_id: int
    message_id: int | None = None
    ts: int | None = None


@dataclass(slots=True)
class PublishResult:
    agent_id: int | None
    channel_name: str | None
    message_id: int | None = None
    error: str | None = None
    status: int = 200

    @property
    def success(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class AggregateItem:
    agent_id: int
    channel_name: str
    data: Any
    mode: Literal["merge", "replace"] = "merge"
    replace_path: str | None = None
    author_id: int | None = None  # who asked for the change (None: the platform itself)


def channel_from_row(row: Sequence[Any]) -> Channel:
    return Channel(
        id=int(row[0]),
        agent_id=int(row[1]),
        name=row[2],
        is_private=bool(row[3]),
        message_schema=jsonish.loads_or_none(row[4]),
        aggregate_schema=jsonish.loads_or_none(row[5]),
        aggregate=jsonish.loads_or_none(row[6]),
        aggregate_attachments=jsonish.loads_or_none(row[7]) or [],
        last_updated=row[8],
    )


def message_from_row(row: Sequence[Any], channel: Channel) -> Message:
    return Message(
        id=int(row[1]),
        channel_id=int(row[0]),
        agent_id=channel.agent_id,
        channel_name=channel.name,
        author_id=int(row[2]),
        data=jsonish.loads(row[3]),
        attachments=jsonish.loads_or_none(row[4]),
    )


# ---------------------------------------------------------------- JSON shapes and events


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "author_id": str(message.author_id),
        "channel": {"agent_id": str(message.agent_id), "name": message.channel_name},
        "data": message.data,
        "attachments": message.attachments or [],
        "timestamp": timestamp_ms(message.id),
    }


def aggregate_json(channel: Channel) -> dict[str, Any]:
    return {
        "data": channel.aggregate if channel.aggregate is not None else {},
        "attachments": channel.aggregate_attachments,
        "last_updated": channel.last_updated,
    }


def channel_json(channel: Channel, *, with_aggregate: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(channel.id),
        "name": channel.name,
        "owner_id": str(channel.agent_id),
        "is_private": channel.is_private,
        "aggregate_schema": channel.aggregate_schema,
        "message_schema": channel.message_schema,
    }
    if with_aggregate:
        body["aggregate"] = aggregate_json(channel)
    return body


def diff(old: Any, new: Any) -> Any:
    """The merge-patch that turns ``old`` into ``new`` (what changed, for diff-only views)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if key not in old or before != value:
            both_objects = isinstance(before, dict) and isinstance(value, dict)
            patch[key] = diff(before, value) if both_objects else value
    return patch


def _event(kind: str, agent_id: int, event_id: int, data: dict[str, Any]) -> Event:
    return Event(CHANNEL_EVENTS, str(agent_id), {"t": kind, "id": str(event_id), "d": data})


def message_event(kind: str, message: Message) -> Event:
    return _event(kind, message.agent_id, message.id, message_json(message))


AggregateSource = Literal["publish", "update"]
"""What changed an aggregate: published messages, or a PATCH / PUT of the aggregate."""


def aggregate_event(
    channel: Channel, old: Any, source: AggregateSource = "update", author_id: int | None = None
) -> Event:
    """``AggregateUpdate``. ``source`` and ``author_id`` say what made the change and who
    (the last author, for a publish of several messages), so that a consumer on any bus
    can tell a publish's change from a PATCH and an app's own writes from others'."""
    data = {
        "agent_id": str(channel.agent_id),
        "channel": {"agent_id": str(channel.agent_id), "name": channel.name},
        "aggregate": aggregate_json(channel),
        "diff": diff(old, channel.aggregate),
        "source": source,
        "author_id": None if author_id is None else str(author_id),
    }
    return _event("AggregateUpdate", channel.agent_id, new_id(), data)


# ---------------------------------------------------------------- channels


def load_channels(keys: Iterable[ChannelKey]) -> Work[dict[ChannelKey, Channel]]:
    found: dict[ChannelKey, Channel] = {}
    wanted = list(keys)
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        chunk = wanted[start : start + LOOKUP_CHUNK]
        where = " OR ".join(["(agent_id = ? AND name = ?)"] * len(chunk))
        params = [part for key in chunk for part in key]
        rows = yield Fetch(f"SELECT {CHANNEL_COLUMNS} FROM channels WHERE {where}", params)
        for row in rows:
            channel = channel_from_row(row)
            found[(channel.agent_id, channel.name)] = channel
    return found


def ensure_channels(keys: Iterable[ChannelKey]) -> Work[dict[ChannelKey, Channel]]:
    """The channels for ``keys``, creating the ones that do not exist yet."""
    wanted = set(keys)
    found = yield from load_channels(wanted)
    missing = wanted - found.keys()
    if missing:
        yield ExecuteMany(
            "INSERT INTO channels (id, agent_id, name, is_private) VALUES (?, ?, ?, 0) "
            "ON CONFLICT (agent_id, name) DO NOTHING",
            [(new_id(), agent_id, name) for agent_id, name in missing],
        )
        found.update((yield from load_channels(missing)))
    return found


def get_channel(agent_id: int, name: str) -> Work[Channel | None]:
    found = yield from load_channels([(agent_id, name)])
    return found.get((agent_id, name))


def require_channel(agent_id: int, name: str) -> Work[Channel]:
    channel = yield from get_channel(agent_id, name)
    if channel is None:
        raise NotFound(f"channel {name!r} of agent {agent_id} does not exist")
    return channel


def list_channels(agent_id: int) -> Work[list[Channel]]:
    rows = yield Fetch(
        f"SELECT {CHANNEL_COLUMNS} FROM channels WHERE agent_id = ? ORDER BY name", (agent_id,)
    )
    return [channel_from_row(row) for row in rows]


def put_channel(
    agent_id: int,
    name: str,
    *,
    is_private: bool | None = None,
    message_schema: Any = None,
    aggregate_schema: Any = None,
) -> Work[tuple[Channel, bool]]:
    """Create the channel or update its settings; returns it and whether it was created."""
    existing = yield from get_channel(agent_id, name)
    created = existing is None
    if existing is None:
        yield Execute(
            "INSERT INTO channels (id, agent_id, name, is_private) VALUES (?, ?, ?, 0) "
            "ON CONFLICT (agent_id, name) DO NOTHING",
            (new_id(), agent_id, name),
        )
    settings = {
        "is_private": None if is_private is None else int(is_private),
        "message_schema": None if message_schema is None else jsonish.dumps_str(message_schema),
        "aggregate_schema": (
            None if aggregate_schema is None else jsonish.dumps_str(aggregate_schema)
        ),
    }
    for column, value in settings.items():
        if value is not None:
            yield Execute(
                f"UPDATE channels SET {column} = ? WHERE agent_id = ? AND name = ?",
                (value, agent_id, name),
            )
    channel = yield from require_channel(agent_id, name)
    return channel, created


# ---------------------------------------------------------------- publishing


def _existing_ids(pairs: list[tuple[int, int]]) -> Work[set[tuple[int, int]]]:
    existing: set[tuple[int, int]] = set()
    for start in range(0, len(pairs), LOOKUP_CHUNK):
        chunk = pairs[start : start + LOOKUP_CHUNK]
        where = " OR ".join(["(channel_id = ? AND id = ?)"] * len(chunk))
        rows = yield Fetch(
            f"SELECT channel_id, id FROM messages WHERE {where}",
            [part for pair in chunk for part in pair],
        )
        existing.update((int(a), int(b)) for a, b in rows)
    return existing


def _owned(value: Any) -> Any:
    """A copy of ``value`` whose objects (dicts) are all new, so it may be merged in place."""
    if isinstance(value, dict):
        return {key: _owned(inner) for key, inner in value.items()}
    return value


def _merge_in_place(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7396 merge of ``patch`` into ``target``, which is changed; ``patch`` is not.

    Gives what ``merge_patch`` gives, as long as every dict inside ``target`` is owned by
    the caller (see ``_owned``): dicts from ``patch`` are copied in, never shared."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            inner = target.get(key)
            if not isinstance(inner, dict):
                inner = target[key] = {}
            _merge_in_place(inner, value)
        else:
            target[key] = value


class _Batch:
    """Folds a batch of publishes into rows, aggregates and events (no I/O).

    This is the per-message hot path inside the write transaction, so it builds each
    ``MessageCreate`` event body directly (``message_json``'s JSON, without a ``Message``
    object first) and merges into an aggregate copy it owns instead of copying the whole
    aggregate once per message.
    """

    def __init__(
        self,
        channels: dict[ChannelKey, Channel],
        existing: set[tuple[int, int]],
        fresh_ids: Iterator[int],
    ):
        self.channels = channels
        self.fresh_ids = fresh_ids  # ids for the messages that bring none
        self.existing = existing
        self.before = {key: channel.aggregate for key, channel in channels.items()}
        self.touched: dict[ChannelKey, Channel] = {}
        self.owned: set[ChannelKey] = set()  # channels whose aggregate is a private copy
        self.rows: list[tuple[int, int, int, str, None]] = []
        self.events: list[Event] = []
        self.authors: dict[ChannelKey, int | None] = {}  # the last author per channel

    def add(self, item: PublishItem) -> PublishResult:
        key = (item.agent_id, item.channel_name)
        channel = self.channels[key]
        if item.message_id is not None:
            message_id = item.message_id
            if (channel.id, message_id) in self.existing:
                # a retry of a message we already have
                return PublishResult(item.agent_id, item.channel_name, message_id)
        else:
            message_id = next(self.fresh_ids) if item.ts is None else id_at(item.ts)
        data = item.data
        try:
            self._merge(key, channel, data)
        except ApiError as exc:
            return PublishResult(
                item.agent_id, item.channel_name, error=exc.message, status=exc.status
            )
        self.existing.add((channel.id, message_id))
        self.touched[key] = channel
        self.authors[key] = item.author_id
        self.rows.append((channel.id, message_id, item.author_id, jsonish.dumps_str(data), None))
        text_id, agent = str(message_id), str(item.agent_id)
        body = {
            "id": text_id,
            "author_id": str(item.author_id),
            "channel": {"agent_id": agent, "name": channel.name},
            "data": data,
            "attachments": [],
            "timestamp": timestamp_ms(message_id),
        }
        value = {"t": "MessageCreate", "id": text_id, "d": body}
        self.events.append(Event(CHANNEL_EVENTS, agent, value))
        return PublishResult(item.agent_id, item.channel_name, message_id)

    def _merge(self, key: ChannelKey, channel: Channel, data: Any) -> None:
        if channel.message_schema is not None:
            validate(jsonish.dumps_str(channel.message_schema), data, "message")
        if channel.aggregate_schema is not None:
            # checked before it replaces the aggregate, so a refusal changes nothing
            aggregate = merge_patch(channel.aggregate, data)
            validate(jsonish.dumps_str(channel.aggregate_schema), aggregate, "aggregate")
            channel.aggregate = aggregate
            self.owned.discard(key)
        elif isinstance(data, dict):
            if key not in self.owned:
                current = channel.aggregate
                channel.aggregate = _owned(current) if isinstance(current, dict) else {}
                self.owned.add(key)
            _merge_in_place(channel.aggregate, data)
        else:
            channel.aggregate = data  # a patch that is not an object replaces the aggregate
            self.owned.discard(key)


def publish(items: Sequence[PublishItem]) -> Work[list[PublishResult]]:
    """Append messages and merge them into their channels' aggregates, in order.

    An item that breaks its channel's schema fails alone; the others are written.
    """
    channels = yield from ensure_channels({(i.agent_id, i.channel_name) for i in items})
    by_key = {(c.agent_id, c.name): c.id for c in channels.values()}
    given = [(by_key[(i.agent_id, i.channel_name)], i.message_id) for i in items if i.message_id]
    existing = (yield from _existing_ids(given)) if given else set()
    unnamed = sum(1 for i in items if i.message_id is None and i.ts is None)
    batch = _Batch(channels, existing, iter(new_ids(unnamed)))
    results = [batch.add(item) for item in items]
    if batch.rows:
        yield ExecuteMany(
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?)", batch.rows
        )
    yield from _save_aggregates(
        batch.touched.values(), batch.before, batch.events, "publish", batch.authors
    )
    return results


def _save_aggregates(
    channels: Iterable[Channel],
    before: dict[ChannelKey, Any],
    events: list[Event],
    source: AggregateSource,
    authors: dict[ChannelKey, int | None],
) -> Work[None]:
    stamp = now_ms()
    rows = []
    for channel in channels:
        channel.last_updated = stamp
        rows.append((jsonish.dumps_str(channel.aggregate), stamp, channel.id))
        key = (channel.agent_id, channel.name)
        events.append(aggregate_event(channel, before.get(key), source, authors.get(key)))
    if rows:
        yield ExecuteMany("UPDATE channels SET aggregate = ?, last_updated = ? WHERE id = ?", rows)
    if events:
        yield Emit(events)


def update_aggregates(items: Sequence[AggregateItem]) -> Work[list[PublishResult]]:
    """PATCH (merge, optionally replacing one subtree) or PUT (replace) aggregates."""
    channels = yield from ensure_channels({(i.agent_id, i.channel_name) for i in items})
    before = {key: channel.aggregate for key, channel in channels.items()}
    touched: dict[ChannelKey, Channel] = {}
    authors: dict[ChannelKey, int | None] = {}
    results = []
    for item in items:
        key = (item.agent_id, item.channel_name)
        channel = channels[key]
        result = PublishResult(item.agent_id, item.channel_name)
        if item.mode == "replace":
            updated = item.data
        else:
            updated = apply_update(channel.aggregate, item.data, item.replace_path)
        try:
            if channel.aggregate_schema is not None:
                validate(jsonish.dumps_str(channel.aggregate_schema), updated, "aggregate")
        except ApiError as exc:
            result.error, result.status = exc.message, exc.status
        else:
            channel.aggregate = updated
            touched[key] = channel
            authors[key] = item.author_id
        results.append(result)
    events: list[Event] = []
    yield from _save_aggregates(touched.values(), before, events, "update", authors)
    return results


# ---------------------------------------------------------------- history


def list_messages(
    channel: Channel, *, before: int | None = None, after: int | None = None, limit: int = 50
) -> Work[list[Message]]:
    """Newest first, strictly between ``after`` and ``before`` (snowflake ids)."""
    rows = yield Fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ? AND id < ? AND id > ? "
        "ORDER BY id DESC LIMIT ?",
        (channel.id, before if before is not None else 2**63 - 1, after or 0, limit),
    )
    return [message_from_row(row, channel) for row in rows]


def get_message(channel: Channel, message_id: int) -> Work[Message]:
    rows = yield Fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ? AND id = ?",
        (channel.id, message_id),
    )
    if not rows:
        raise NotFound(f"message {message_id} is not in channel {channel.name!r}")
    return message_from_row(rows[0], channel)


def edit_message(channel: Channel, message_id: int, data: Any, *, merge: bool) -> Work[Message]:
    """PATCH (merge) or PUT (replace) one message's data. History edits leave the
    aggregate as it is: it is the fold of what was published, when it was published."""
    message = yield from get_message(channel, message_id)
    updated = merge_patch(message.data, data) if merge else data
    if channel.message_schema is not None:
        validate(jsonish.dumps_str(channel.message_schema), updated, "message")
    yield Execute(
        "UPDATE messages SET data = ? WHERE channel_id = ? AND id = ?",
        (jsonish.dumps_str(updated), channel.id, message_id),
    )
    edited = Message(
        message.id, channel.id, channel.agent_id, channel.name, message.author_id, updated
    )
    yield Emit([message_event("MessageUpdate", edited)])
    return edited


def delete_message(channel: Channel, message_id: int) -> Work[None]:
    message = yield from get_message(channel, message_id)
    yield Execute("DELETE FROM messages WHERE channel_id = ? AND id = ?", (channel.id, message_id))
    yield Emit([message_event("MessageDelete", message)])
