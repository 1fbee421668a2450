"""The events an app's handlers receive, read from the invocation envelope's ``d``.

Every event keeps the fields the seed uses (``event.channel_name``, ``event.message.data``,
``event.schedule_id``, ``event.payload`` …) and carries ``event_id``: the stable id the
runtime gives each delivery, so a handler can be idempotent under at-least-once delivery.
Ids arrive as JSON strings (JavaScript cannot hold 64-bit integers) and are ints here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetcloud.sdk.errors import InvalidEnvelope


def as_id(value: Any) -> int | None:
    """An id from JSON (``"912…"`` or ``912…``) as an int; ``None`` if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidEnvelope(f"an id must be an integer, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise InvalidEnvelope(f"an id must be an integer, not {value!r}")


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise InvalidEnvelope(f"the event's {key!r} must be a JSON object, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ChannelID:
    agent_id: int | None
    name: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelID:
        return cls(as_id(data.get("agent_id")), str(data.get("name", "")))


@dataclass(slots=True)
class Message:
    """A channel message, as the data API shapes it."""

    id: int | None
    author_id: int | None
    data: Any
    timestamp: int | None = None
    channel: ChannelID | None = None
    attachments: list[Any] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        channel = data.get("channel")
        return cls(
            id=as_id(data.get("id")),
            author_id=as_id(data.get("author_id")),
            data=data.get("data"),
            timestamp=data.get("timestamp"),
            channel=ChannelID.from_dict(channel) if isinstance(channel, Mapping) else None,
            attachments=list(data.get("attachments") or []),
        )


@dataclass(slots=True)
class Aggregate:
    """A channel's current state: ``{"data", "attachments", "last_updated"}``."""

    data: Any
    attachments: list[Any] = field(default_factory=list)
    last_updated: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Aggregate:
        data = data or {}
        return cls(data.get("data"), list(data.get("attachments") or []), data.get("last_updated"))


@dataclass(slots=True)
class MessageCreateEvent:
    """``on_message_create``: a message was published to a subscribed channel.

    ``d``: ``{"message": <Message JSON>, "organisation_id", "event_id"?}``; ``channel_name``,
    ``owner_id`` and ``author_id`` default to the message's own.
    """

    channel_name: str
    message: Message
    author_id: int | None
    owner_id: int | None
    organisation_id: int | None = None
    event_id: str | None = None

    @property
    def agent_id(self) -> int | None:
        """The agent that owns the channel (same as ``owner_id``)."""
        return self.owner_id

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MessageCreateEvent:
        message = Message.from_dict(_object(data, "message"))
        channel = message.channel
        name = data.get("channel_name") or (channel.name if channel else None)
        if not name:
            raise InvalidEnvelope("a message event names no channel (channel_name)")
        owner = as_id(data.get("owner_id") or data.get("agent_id"))
        return cls(
            channel_name=str(name),
            message=message,
            author_id=as_id(data.get("author_id")) or message.author_id,
            owner_id=owner if owner is not None else (channel.agent_id if channel else None),
            organisation_id=as_id(data.get("organisation_id")),
            event_id=_event_id(data),
        )


@dataclass(slots=True)
class AggregateUpdateEvent:
    """``on_aggregate_update``: a channel's aggregate changed.

    ``d``: the bus's AggregateUpdate ``{"channel": {"agent_id", "name"}, "aggregate":
    <Aggregate JSON>, "diff": <merge-patch from the previous state>, "author_id"?,
    "organisation_id"}``. ``request_data`` is the diff as an Aggregate (the seed's name).
    """

    channel: ChannelID
    aggregate: Aggregate
    diff: Any
    author_id: int | None = None
    organisation_id: int | None = None
    event_id: str | None = None

    @property
    def channel_name(self) -> str:
        return self.channel.name

    @property
    def agent_id(self) -> int | None:
        return self.channel.agent_id

    @property
    def request_data(self) -> Aggregate:
        return Aggregate(self.diff)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AggregateUpdateEvent:
        channel = ChannelID.from_dict(_object(data, "channel"))
        if not channel.name:
            raise InvalidEnvelope("an aggregate event names no channel")
        if channel.agent_id is None:
            channel = ChannelID(as_id(data.get("agent_id")), channel.name)
        aggregate = data.get("aggregate")
        diff = data.get("diff", data.get("request_data"))
        return cls(
            channel=channel,
            aggregate=Aggregate.from_dict(aggregate if isinstance(aggregate, Mapping) else None),
            diff=diff.get("data") if isinstance(diff, Mapping) and "data" in diff else diff,
            author_id=as_id(data.get("author_id")),
            organisation_id=as_id(data.get("organisation_id")),
            event_id=_event_id(data),
        )


@dataclass(slots=True)
class ScheduleEvent:
    """``on_schedule``: ``d`` = ``{"schedule_id", "organisation_id", "agent_id"?}``."""

    schedule_id: str | None
    organisation_id: int | None = None
    agent_id: int | None = None
    event_id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleEvent:
        schedule_id = data.get("schedule_id")
        return cls(
            schedule_id=None if schedule_id is None else str(schedule_id),
            organisation_id=as_id(data.get("organisation_id")),
            agent_id=as_id(data.get("agent_id")),
            event_id=_event_id(data),
        )


@dataclass(slots=True)
class IngestionEndpointEvent:
    """``on_ingestion_endpoint``: a POST reached the integration's ingestion URL.

    ``d``: ``{"ingestion_id", "organisation_id", "agent_id", "payload": <base64 of the raw
    body>, "headers"?}``. ``payload`` is what ``parse_ingestion_event_payload`` made of it;
    ``raw_payload`` keeps the base64 text.
    """

    ingestion_id: str | None
    organisation_id: int | None
    agent_id: int | None
    payload: Any
    raw_payload: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    event_id: str | None = None

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], parser: Callable[[str], Any]
    ) -> IngestionEndpointEvent:
        raw = data.get("payload")
        if not isinstance(raw, str):
            raise InvalidEnvelope("an ingestion event's payload must be base64 text")
        ingestion_id = data.get("ingestion_id")
        headers = data.get("headers")
        return cls(
            ingestion_id=None if ingestion_id is None else str(ingestion_id),
            organisation_id=as_id(data.get("organisation_id")),
            agent_id=as_id(data.get("agent_id")),
            payload=parser(raw),
            raw_payload=raw,
            headers=dict(headers) if isinstance(headers, Mapping) else {},
            event_id=_event_id(data),
        )


@dataclass(slots=True)
class DeploymentEvent:
    """``on_deployment``: ``d`` = ``{"agent_id", "app_id", "app_install_id",
    "organisation_id"}``."""

    agent_id: int | None
    app_id: int | None
    app_install_id: int | None
    organisation_id: int | None = None
    event_id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentEvent:
        return cls(
            agent_id=as_id(data.get("agent_id")),
            app_id=as_id(data.get("app_id")),
            app_install_id=as_id(data.get("app_install_id") or data.get("installation_id")),
            organisation_id=as_id(data.get("organisation_id")),
            event_id=_event_id(data),
        )


@dataclass(slots=True)
class ManualInvokeEvent:
    """``on_manual_invoke``: ``d`` = ``{"payload", "organisation_id", "user_id"?}``."""

    payload: Any
    organisation_id: int | None = None
    user_id: int | None = None
    event_id: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ManualInvokeEvent:
        return cls(
            payload=data.get("payload"),
            organisation_id=as_id(data.get("organisation_id")),
            user_id=as_id(data.get("user_id")),
            event_id=_event_id(data),
        )


Event = (
    MessageCreateEvent
    | AggregateUpdateEvent
    | ScheduleEvent
    | IngestionEndpointEvent
    | DeploymentEvent
    | ManualInvokeEvent
)

HANDLER_NAMES = (
    "on_message_create",
    "on_aggregate_update",
    "on_schedule",
    "on_ingestion_endpoint",
    "on_deployment",
    "on_manual_invoke",
)


def parse_event(op: str, data: Mapping[str, Any], parser: Callable[[str], Any]) -> Event:
    """The event object for handler ``op`` (one of ``HANDLER_NAMES``)."""
    if op == "on_ingestion_endpoint":
        return IngestionEndpointEvent.from_dict(data, parser)
    readers: dict[str, Callable[[Mapping[str, Any]], Event]] = {
        "on_message_create": MessageCreateEvent.from_dict,
        "on_aggregate_update": AggregateUpdateEvent.from_dict,
        "on_schedule": ScheduleEvent.from_dict,
        "on_deployment": DeploymentEvent.from_dict,
        "on_manual_invoke": ManualInvokeEvent.from_dict,
    }
    reader = readers.get(op)
    if reader is None:
        raise InvalidEnvelope(f"unknown handler {op!r}; expected one of {', '.join(HANDLER_NAMES)}")
    return reader(data)


def _event_id(data: Mapping[str, Any]) -> str | None:
    value = data.get("event_id")
    return None if value is None else str(value)
