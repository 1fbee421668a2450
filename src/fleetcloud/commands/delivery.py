"""The connector-independent half of delivering a command.

Every connector delivers the same way::

    load command → still pending? expired? → resolve its parser script → format it in a
    parser worker (time-limited) → hand the bytes to a transport → record SENT, and
    DELIVERED / SUCCEEDED / FAILED when the transport or the device acknowledges

``Delivery.prepare`` does everything up to the bytes, and records the end of the command
(``EXPIRED``, ``FAILED`` with the reason) when there are no bytes to send.
``Delivery.deliver`` adds a ``Transport`` call and records what it reports. A transport
(MQTT publish, CoAP request or response) raises ``TransportError`` when it could not
send: the command stays as it was, and the connector tries again later.

``DeviceSettings`` is a device's parser setup (``command_devices``): the parser its
uplinks go through and the ``config`` dict every parser call for that device receives.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetcloud.commands.core.models import CommandStatus
from fleetcloud.commands.lifecycle import Change, StoredCommand
from fleetcloud.commands.runner import ParserError, ParserRunner
from fleetcloud.commands.scripts import ParserLibrary, Script
from fleetcloud.commands.tracker import CommandTracker
from fleetcloud.core import jsonish
from fleetcloud.core.errors import ApiError, FleetError
from fleetcloud.store.agents import now_ms
from fleetcloud.store.base import Store
from fleetcloud.store.ops import Execute, Fetch, Work, placeholders

SETTINGS_TTL = 1.0  # seconds a device's settings are trusted before they are read again


class TransportError(FleetError):
    """The transport could not send now (broker down, device unreachable): retry later."""

    retriable = True


class Transport(Protocol):
    async def send(self, command: StoredCommand, data: bytes) -> bool:
        """Send ``data``; True if the transport's own acknowledgement means the device
        (or, for MQTT QoS ≥ 1 without device acks, the broker) has it."""


# ---------------------------------------------------------------- device settings


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    agent_id: int
    organisation_id: int
    parser_script_ref: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": str(self.agent_id),
            "parser_script_ref": self.parser_script_ref,
            "config": self.config,
        }


def load_settings(agent_ids: Iterable[int]) -> Work[dict[int, DeviceSettings]]:
    """Settings of the device agents among ``agent_ids`` (defaults if none were set);
    ids that are not device agents are absent."""
    wanted = sorted(set(agent_ids))
    found: dict[int, DeviceSettings] = {}
    for start in range(0, len(wanted), 200):
        chunk = wanted[start : start + 200]
        rows = yield Fetch(
            "SELECT a.id, a.organisation_id, d.parser_script_ref, d.config FROM agents a "  # noqa: S608 - constant columns, "?" placeholders
            "LEFT JOIN command_devices d ON d.agent_id = a.id "
            f"WHERE a.kind = 'device' AND a.id IN ({placeholders(len(chunk))})",
            chunk,
        )
        for agent_id, organisation_id, ref, config in rows:
            found[int(agent_id)] = DeviceSettings(
                int(agent_id), int(organisation_id), ref, jsonish.loads(config) if config else {}
            )
    return found


def save_settings(
    agent_id: int, parser_script_ref: str | None, config: dict[str, Any]
) -> Work[None]:
    yield Execute(
        "INSERT INTO command_devices (agent_id, parser_script_ref, config, updated_ms) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET "
        "parser_script_ref = excluded.parser_script_ref, config = excluded.config, "
        "updated_ms = excluded.updated_ms",
        (agent_id, parser_script_ref, jsonish.dumps_str(config), now_ms()),
    )


class SettingsCache:
    """Device settings, read at most once a second per device (and in batches)."""

    def __init__(self, store: Store, ttl: float = SETTINGS_TTL) -> None:
        self.store = store
        self.ttl = ttl
        self._entries: dict[int, tuple[float, DeviceSettings | None]] = {}

    async def get_many(self, agent_ids: Iterable[int]) -> dict[int, DeviceSettings | None]:
        now = time.monotonic()
        wanted = set(agent_ids)
        stale = [a for a in wanted if (e := self._entries.get(a)) is None or e[0] < now]
        if stale:
            loaded = await self.store.read(load_settings(stale))
            if len(self._entries) > 100_000:
                self._entries.clear()
            for agent_id in stale:
                self._entries[agent_id] = (now + self.ttl, loaded.get(agent_id))
        return {agent_id: self._entries[agent_id][1] for agent_id in wanted}

    async def get(self, agent_id: int) -> DeviceSettings | None:
        return (await self.get_many([agent_id]))[agent_id]

    def forget(self, agent_id: int) -> None:
        self._entries.pop(agent_id, None)


# ---------------------------------------------------------------- delivery


def sent_changes(
    command: StoredCommand, *, delivered: bool, then: Change | None = None
) -> list[Change]:
    """SENT (counting an attempt), DELIVERED if the transport's ack counts as delivery,
    then ``then`` (an acknowledgement that arrived while sending)."""
    changes = [Change(command.request_id, CommandStatus.SENT, None, attempt=True)]
    if delivered:
        changes.append(Change(command.request_id, CommandStatus.DELIVERED, "broker ack"))
    if then is not None:
        changes.append(then)
    return changes


class Delivery:
    def __init__(
        self,
        tracker: CommandTracker,
        library: ParserLibrary,
        runner: ParserRunner,
        settings: SettingsCache,
    ) -> None:
        self.tracker = tracker
        self.library = library
        self.runner = runner
        self.settings = settings

    async def fail(self, command: StoredCommand, reason: str) -> None:
        await self.tracker.change(command.request_id, CommandStatus.FAILED, reason)

    async def expire_if_due(self, command: StoredCommand) -> bool:
        """Record ``EXPIRED`` if ``expires_at`` has passed; True if it has."""
        if not command.expired(now_ms()):
            return False
        await self.tracker.change(
            command.request_id, CommandStatus.EXPIRED, "expired before delivery"
        )
        return True

    async def prepare(self, command: StoredCommand) -> bytes | None:
        """The bytes to send for ``command``, or None once its end has been recorded."""
        if await self.expire_if_due(command):
            return None
        try:
            script = await self.library.resolve(command.organisation_id, command.parser_script_ref)
        except ApiError as exc:
            await self.fail(command, exc.message)
            return None
        try:
            return await self.format(script, command)
        except ParserError as exc:
            await self.fail(command, exc.message)
            return None

    async def format(self, script: Script, command: StoredCommand) -> bytes:
        settings = await self.settings.get(command.agent_id) if command.agent_id else None
        config = settings.config if settings is not None else {}
        return await self.runner.format_command(script, command.message(), config)

    async def deliver(self, command: StoredCommand, transport: Transport) -> CommandStatus | None:
        """Prepare, send and record; returns the status recorded, or None if nothing
        changed (the transport failed: retry later)."""
        data = await self.prepare(command)
        if data is None:
            return CommandStatus.FAILED if not command.expired(now_ms()) else CommandStatus.EXPIRED
        try:
            delivered = await transport.send(command, data)
        except TransportError:
            return None
        await self.tracker.apply(sent_changes(command, delivered=delivered))
        return CommandStatus.DELIVERED if delivered else CommandStatus.SENT

    def record_sent(
        self, command: StoredCommand, *, delivered: bool, then: Change | None = None
    ) -> None:
        """Record a (re)send, and DELIVERED when the transport's ack counts as delivery,
        and ``then`` (an acknowledgement that arrived while sending) after them. Queued
        with the tracker, not awaited: the next command need not wait for the database
        (if the write fails the command keeps its status and is sent again later)."""
        self.tracker.submit(sent_changes(command, delivered=delivered, then=then))

    async def parse_uplink(
        self, settings: DeviceSettings, payload: bytes, metadata: dict[str, Any]
    ) -> dict[str, Any]:
        """Run the device's parser ``parse`` on an uplink (raises ``ParserError`` or an
        ``ApiError`` for an unknown script)."""
        if settings.parser_script_ref is None:
            raise ApiError("the device has no uplink parser")
        script = await self.library.resolve(settings.organisation_id, settings.parser_script_ref)
        return await self.runner.parse(script, payload, metadata, settings.config)
