"""Where every command is and how it got there: units of work on the ``commands`` tables.

- ``record`` stores commands as ``QUEUED`` — idempotently by ``request_id``, so a command
  seen twice (a Kafka redelivery, both connectors consuming it) is stored once. A command
  for a device fleetcloud does not know is stored ``FAILED`` with "unknown device".
- ``transition`` moves commands forward (``can_move``), with a guarded ``UPDATE`` so a
  late or repeated change (a duplicate ack) changes nothing.

Each change appends to ``command_history`` and publishes one message to the device's
``commands`` channel (``{"request_id", "command_type", "status", "reason"?, …}``), in
the same transaction, so every transition is visible live over the gateway. A unit that
runs several of them passes one ``Applied`` to each and ``save``s it once at its end:
one history insert and one publish (one channel lookup, one aggregate update per device)
for the whole unit, the messages still in the order the changes were made.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleetcloud.commands.core.models import PENDING, CommandMessage, CommandStatus, sources_of
from fleetcloud.core import jsonish
from fleetcloud.core.ids import new_id
from fleetcloud.core.types import Event
from fleetcloud.store.agents import now_ms
from fleetcloud.store.channels import PublishItem, publish
from fleetcloud.store.ops import Emit, Execute, ExecuteMany, Fetch, Work, placeholders

COMMANDS_CHANNEL = "commands"
"""Every device's channel that carries its commands' transitions."""

UNKNOWN_DEVICE = "unknown device"
CHUNK = 200

COLUMNS = (
    "request_id, seq, organisation_id, agent_id, author_id, device_id, command_type, "
    "protocol, parser_script_ref, payload, metadata, timestamp_ms, expires_ms, status, "
    "reason, attempts, created_ms, updated_ms"
)


@dataclass(slots=True)
class StoredCommand:
    """A command as fleetcloud keeps it: the ``CommandMessage`` plus where it is."""

    request_id: str
    seq: int
    organisation_id: int | None
    agent_id: int | None
    author_id: int | None
    device_id: str
    command_type: str
    protocol: str
    parser_script_ref: str
    payload: dict[str, Any]
    metadata: dict[str, Any]
    timestamp_ms: int
    expires_ms: int | None
    status: CommandStatus
    reason: str | None = None
    attempts: int = 0
    created_ms: int = 0
    updated_ms: int = 0

    def message(self) -> dict[str, Any]:
        """The command in ``CommandMessage`` JSON form (what a parser script receives)."""
        return {
            "device_id": self.device_id,
            "command_type": self.command_type,
            "payload": self.payload,
            "protocol": self.protocol,
            "parser_script_ref": self.parser_script_ref,
            "metadata": self.metadata,
            "request_id": self.request_id,
            "timestamp": _iso(self.timestamp_ms),
            "expires_at": None if self.expires_ms is None else _iso(self.expires_ms),
        }

    def expired(self, at_ms: int) -> bool:
        return self.expires_ms is not None and self.expires_ms <= at_ms

    def to_json(self) -> dict[str, Any]:
        """The API's shape of a command."""
        return {
            **self.message(),
            "agent_id": None if self.agent_id is None else str(self.agent_id),
            "status": self.status.value,
            "reason": self.reason,
            "attempts": self.attempts,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """Move ``request_id`` to ``status``; ``attempt`` counts a (re)send; with
    ``agent_id`` the change applies only to that device's command (a device's ack)."""

    request_id: str
    status: CommandStatus
    reason: str | None = None
    attempt: bool = False
    agent_id: int | None = None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    status: CommandStatus
    reason: str | None
    at_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status.value, "reason": self.reason, "at_ms": self.at_ms}


@dataclass(slots=True)
class Applied:
    """History rows and ``commands`` channel messages of changes made, not saved yet."""

    history: list[tuple[int, int, str, str | None, int]] = field(default_factory=list)
    messages: list[PublishItem] = field(default_factory=list)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def from_row(row: Sequence[Any]) -> StoredCommand:
    return StoredCommand(
        request_id=str(row[0]),
        seq=int(row[1]),
        organisation_id=None if row[2] is None else int(row[2]),
        agent_id=None if row[3] is None else int(row[3]),
        author_id=None if row[4] is None else int(row[4]),
        device_id=str(row[5]),
        command_type=str(row[6]),
        protocol=str(row[7]),
        parser_script_ref=str(row[8]),
        payload=jsonish.loads(row[9]),
        metadata=jsonish.loads(row[10]),
        timestamp_ms=int(row[11]),
        expires_ms=None if row[12] is None else int(row[12]),
        status=CommandStatus(row[13]),
        reason=row[14],
        attempts=int(row[15]),
        created_ms=int(row[16]),
        updated_ms=int(row[17]),
    )


def transition_message(command: StoredCommand, at_ms: int) -> dict[str, Any]:
    """What the ``commands`` channel gets for one transition."""
    data: dict[str, Any] = {
        "request_id": command.request_id,
        "command_type": command.command_type,
        "protocol": command.protocol,
        "status": command.status.value,
        "reason": command.reason,
        "attempts": command.attempts,
        "at_ms": at_ms,
    }
    return data


# ---------------------------------------------------------------- reads


def load(request_ids: Iterable[str]) -> Work[dict[str, StoredCommand]]:
    found: dict[str, StoredCommand] = {}
    wanted = list(dict.fromkeys(request_ids))
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        rows = yield Fetch(
            f"SELECT {COLUMNS} FROM commands WHERE request_id IN ({placeholders(len(chunk))})",  # noqa: S608 - constant columns, "?" placeholders
            chunk,
        )
        for row in rows:
            command = from_row(row)
            found[command.request_id] = command
    return found


def get(request_id: str) -> Work[StoredCommand | None]:
    found = yield from load([request_id])
    return found.get(request_id)


def history(request_id: str) -> Work[list[HistoryEntry]]:
    rows = yield Fetch(
        "SELECT h.status, h.reason, h.at_ms FROM commands c "
        "JOIN command_history h ON h.seq = c.seq WHERE c.request_id = ? ORDER BY h.id",
        (request_id,),
    )
    return [HistoryEntry(CommandStatus(s), r, int(at)) for s, r, at in rows]


def list_for_device(
    agent_id: int, *, limit: int = 50, before_seq: int | None = None, status: str | None = None
) -> Work[list[StoredCommand]]:
    """A device's commands, newest first."""
    sql = f"SELECT {COLUMNS} FROM commands WHERE agent_id = ? AND seq < ?"  # noqa: S608 - constant columns, "?" placeholders
    params: list[Any] = [agent_id, before_seq if before_seq is not None else 2**63 - 1]
    if status is not None:
        sql += " AND status = ?"
        params.append(status)
    rows = yield Fetch(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit))
    return [from_row(row) for row in rows]


def pending(
    protocol: str,
    *,
    after: tuple[int, int] = (0, 0),
    limit: int = 500,
    statuses: Sequence[CommandStatus] = PENDING,
) -> Work[list[StoredCommand]]:
    """Commands still to deliver over ``protocol``, by device and then in order, after
    the ``(agent_id, seq)`` cursor ``after``."""
    agent_id, seq = after
    wanted = (*statuses, *statuses)[:2]  # both slots of the partial index's IN (…)
    rows = yield Fetch(
        f"SELECT {COLUMNS} FROM commands WHERE protocol = ? AND status IN (?, ?) "  # noqa: S608 - constant columns, "?" placeholders
        "AND agent_id IS NOT NULL AND (agent_id > ? OR (agent_id = ? AND seq > ?)) "
        "ORDER BY agent_id, seq LIMIT ?",
        (protocol, *wanted, agent_id, agent_id, seq, limit),
    )
    return [from_row(row) for row in rows]


def pending_for_device(
    agent_id: int, protocol: str, *, after_seq: int = 0, limit: int = 500
) -> Work[list[StoredCommand]]:
    rows = yield Fetch(
        f"SELECT {COLUMNS} FROM commands WHERE protocol = ? AND status IN (?, ?) "  # noqa: S608 - constant columns, "?" placeholders
        "AND agent_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (protocol, *PENDING, agent_id, after_seq, limit),
    )
    return [from_row(row) for row in rows]


def due_to_expire(at_ms: int, limit: int = 500) -> Work[list[str]]:
    rows = yield Fetch(
        "SELECT request_id FROM commands WHERE status IN (?, ?) AND expires_ms IS NOT NULL "
        "AND expires_ms <= ? ORDER BY expires_ms LIMIT ?",
        (*PENDING, at_ms, limit),
    )
    return [str(row[0]) for row in rows]


# ---------------------------------------------------------------- record


def _devices(device_ids: Iterable[str]) -> Work[dict[str, tuple[int, int, int]]]:
    """``device_id`` → (agent id, organisation id, organisation agent id) for known
    device agents."""
    numeric = sorted({d for d in device_ids if d.isdigit() and 0 < int(d) < 2**63})
    found: dict[str, tuple[int, int, int]] = {}
    for start in range(0, len(numeric), CHUNK):
        chunk = numeric[start : start + CHUNK]
        rows = yield Fetch(
            "SELECT a.id, a.organisation_id, o.agent_id FROM agents a "  # noqa: S608 - constant columns, "?" placeholders
            "JOIN organisations o ON o.id = a.organisation_id "
            f"WHERE a.kind = 'device' AND a.id IN ({placeholders(len(chunk))})",
            [int(d) for d in chunk],
        )
        for agent_id, organisation_id, organisation_agent in rows:
            found[str(agent_id)] = (int(agent_id), int(organisation_id), int(organisation_agent))
    return found


def stored(message: CommandMessage, **where: Any) -> StoredCommand:
    """``message`` as a ``StoredCommand``; ``where`` gives the fields the message does not
    have (``seq``, ``organisation_id``, ``agent_id``, ``author_id``, ``status`` …)."""
    return StoredCommand(
        request_id=message.request_id,
        device_id=message.device_id,
        command_type=message.command_type,
        protocol=message.protocol,
        parser_script_ref=message.parser_script_ref,
        payload=message.payload,
        metadata=message.metadata,
        timestamp_ms=message.timestamp_ms,
        expires_ms=message.expires_ms,
        **where,
    )


def _new_command(
    message: CommandMessage, device: tuple[int, int, int] | None, author_id: int | None, at: int
) -> StoredCommand:
    agent_id, organisation_id, organisation_agent = device or (None, None, None)
    return stored(
        message,
        seq=new_id(),
        organisation_id=organisation_id,
        agent_id=agent_id,
        author_id=author_id if author_id is not None else organisation_agent,
        status=CommandStatus.QUEUED if device else CommandStatus.FAILED,
        reason=None if device else UNKNOWN_DEVICE,
        created_ms=at,
        updated_ms=at,
    )


def _insert_row(command: StoredCommand) -> tuple[Any, ...]:
    c = command
    return (
        c.request_id, c.seq, c.organisation_id, c.agent_id, c.author_id, c.device_id,
        c.command_type, c.protocol, c.parser_script_ref, jsonish.dumps_str(c.payload),
        jsonish.dumps_str(c.metadata), c.timestamp_ms, c.expires_ms, c.status.value,
        c.reason, c.attempts, c.created_ms, c.updated_ms,
    )  # fmt: skip


def record(
    messages: Sequence[CommandMessage],
    *,
    author_id: int | None = None,
    emit_topic: str | None = None,
    applied: Applied | None = None,
) -> Work[list[StoredCommand]]:
    """Store ``messages`` (those not stored yet) and return every one as stored, in order.

    With ``emit_topic``, each newly queued command also goes onto that bus topic, keyed by
    its device id, in the same transaction (how commands pushed inside the server reach
    the connectors). With ``applied``, the history and channel messages are left in it
    for the caller to ``save``."""
    existing = yield from load(m.request_id for m in messages)
    fresh = [
        m
        for m in dict((m.request_id, m) for m in messages).values()
        if m.request_id not in existing
    ]
    devices = yield from _devices(m.device_id for m in fresh)
    at = now_ms()
    pending = Applied() if applied is None else applied
    events: list[Event] = []
    for message in fresh:
        command = _new_command(message, devices.get(message.device_id), author_id, at)
        inserted = yield Execute(
            f"INSERT INTO commands ({COLUMNS}) VALUES ({placeholders(18)}) "  # noqa: S608 - constant columns, "?" placeholders
            "ON CONFLICT (request_id) DO NOTHING",
            _insert_row(command),
        )
        if not inserted:
            continue  # stored meanwhile by another process: it is in ``load`` below
        existing[command.request_id] = command
        _note(pending, command, at)
        if emit_topic is not None and command.status is CommandStatus.QUEUED:
            events.append(Event(emit_topic, command.device_id, message.to_json()))
    if applied is None:
        yield from save(pending)
    if events:
        yield Emit(events)
    missing = [m.request_id for m in messages if m.request_id not in existing]
    if missing:
        existing.update((yield from load(missing)))
    return [existing[m.request_id] for m in messages]


def _note(applied: Applied, command: StoredCommand, at: int) -> None:
    applied.history.append((command.seq, new_id(), command.status.value, command.reason, at))
    if command.agent_id is not None:
        author = command.author_id if command.author_id is not None else command.agent_id
        applied.messages.append(
            PublishItem(command.agent_id, COMMANDS_CHANNEL, transition_message(command, at), author)
        )


def save(applied: Applied) -> Work[None]:
    """Write what ``applied`` gathered: the history rows, then the channel messages."""
    if applied.history:
        yield ExecuteMany(
            "INSERT INTO command_history (seq, id, status, reason, at_ms) VALUES (?, ?, ?, ?, ?)",
            applied.history,
        )
    if applied.messages:
        yield from publish(applied.messages)


# ---------------------------------------------------------------- transitions


_Key = tuple[CommandStatus, str | None, bool, int | None]


def _rounds(changes: Sequence[Change]) -> list[dict[_Key, list[str]]]:
    """Split changes into rounds with at most one change per command, each round grouped
    by what it sets, so a command's changes apply in the order they were made."""
    rounds: list[dict[_Key, list[str]]] = []
    seen: dict[str, int] = {}
    for change in changes:
        index = seen.get(change.request_id, 0)
        seen[change.request_id] = index + 1
        if index == len(rounds):
            rounds.append({})
        key = (change.status, change.reason, change.attempt, change.agent_id)
        rounds[index].setdefault(key, []).append(change.request_id)
    return rounds


def transition(
    changes: Sequence[Change], applied: Applied | None = None
) -> Work[dict[str, StoredCommand]]:
    """Apply the changes that are allowed from each command's current status; returns
    the commands that changed, as they are now (a refused change is simply absent).
    With ``applied``, the history and channel messages are left in it (see ``record``)."""
    at = now_ms()
    changed: dict[str, StoredCommand] = {}
    pending = Applied() if applied is None else applied
    for round_ in _rounds(changes):
        for (status, reason, attempt, agent_id), request_ids in round_.items():
            sources = [s.value for s in sources_of(status)]
            only_agent = "" if agent_id is None else " AND agent_id = ?"
            agent = () if agent_id is None else (agent_id,)
            for start in range(0, len(request_ids), CHUNK):
                chunk = request_ids[start : start + CHUNK]
                rows = yield Fetch(
                    "UPDATE commands SET status = ?, reason = ?, updated_ms = ?, "  # noqa: S608 - constant columns, "?" placeholders
                    f"attempts = attempts + ? WHERE request_id IN ({placeholders(len(chunk))}) "
                    f"AND status IN ({placeholders(len(sources))}){only_agent} "
                    f"RETURNING {COLUMNS}",
                    (status.value, reason, at, int(attempt), *chunk, *sources, *agent),
                )
                for row in rows:
                    command = from_row(row)
                    changed[command.request_id] = command
                    _note(pending, command, at)
    if applied is None:
        yield from save(pending)
    return changed


def expire_due(at_ms: int, limit: int = 500) -> Work[dict[str, StoredCommand]]:
    """Move pending commands whose ``expires_at`` has passed to ``EXPIRED``."""
    due = yield from due_to_expire(at_ms, limit)
    if not due:
        return {}
    expired = yield from transition(
        [Change(request_id, CommandStatus.EXPIRED, "expired before delivery") for request_id in due]
    )
    return expired
