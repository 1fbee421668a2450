"""``CommandMessage`` (the seed's model, field for field) and the command status machine.

A command is validated once, where it enters fleetcloud (``CommandMessage(...)``,
``CommandMessage.from_dict``, the HTTP API, a record consumed from Kafka); a bad value
raises ``InvalidCommand`` — a ``ValidationFailed`` (HTTP 422) that is also a
``ValueError`` — never pydantic's own exception.

Protocol metadata is checked for its *types* here (``qos`` 0-2, ``retain`` a bool, …);
whether a key is *required* (MQTT's ``topic``) is the connector's business, as the seed
says, and a command without one ends ``FAILED`` with the reason.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetcloud.core.errors import ValidationFailed

REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
COMMAND_TYPE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,63}$"
MAX_REQUEST_ID = 128
MAX_TOPIC_BYTES = 65_535  # an MQTT topic name's length is a 16-bit number
ACK_MODES = ("device", "broker", "none")


class InvalidCommand(ValidationFailed, ValueError):
    """A command with a missing or bad field (HTTP 422)."""


class CommandStatus(StrEnum):
    QUEUED = "QUEUED"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"

    @property
    def is_final(self) -> bool:
        return self in FINAL


FINAL = frozenset({CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.EXPIRED})
PENDING = (CommandStatus.QUEUED, CommandStatus.SENT)
"""Statuses of commands a connector still has to (re)deliver."""

_MOVES: dict[CommandStatus, frozenset[CommandStatus]] = {
    CommandStatus.QUEUED: frozenset(CommandStatus) - {CommandStatus.QUEUED},
    # SENT -> SENT is a resend (recorded with its attempt number).
    CommandStatus.SENT: frozenset(CommandStatus) - {CommandStatus.QUEUED},
    CommandStatus.DELIVERED: frozenset({CommandStatus.SUCCEEDED, CommandStatus.FAILED}),
}


def can_move(current: CommandStatus, target: CommandStatus) -> bool:
    """Whether a command may go from ``current`` to ``target``: only forward, never out
    of a final status, and ``EXPIRED`` only before the device has it."""
    return target in _MOVES.get(current, frozenset())


def sources_of(target: CommandStatus) -> tuple[CommandStatus, ...]:
    """The statuses from which ``target`` may be reached (for guarded updates)."""
    return tuple(status for status in CommandStatus if can_move(status, target))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _request_id() -> str:
    return str(uuid.uuid4())


class CommandMessage(BaseModel):
    """A command for one device, formatted on delivery by the parser script it names."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    device_id: str = Field(min_length=1, max_length=128)
    command_type: str = Field(pattern=COMMAND_TYPE_PATTERN)
    payload: dict[str, Any] = Field(default_factory=dict)
    protocol: Literal["mqtt", "coap"]
    parser_script_ref: str = Field(pattern=REF_PATTERN)
    metadata: dict[str, Any] = Field(default_factory=dict)
    request_id: str = Field(default_factory=_request_id, min_length=1, max_length=MAX_REQUEST_ID)
    timestamp: datetime = Field(default_factory=_now)
    expires_at: datetime | None = None

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidCommand(describe(exc)) from exc

    @classmethod
    def from_dict(cls, data: Any) -> CommandMessage:
        """Validate a plain dict (JSON from an API client or a Kafka record)."""
        if not isinstance(data, dict):
            raise InvalidCommand(f"a command is a JSON object, not {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidCommand(describe(exc)) from exc

    @field_validator("device_id", mode="before")
    @classmethod
    def _device_id_as_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("request_id")
    @classmethod
    def _printable_request_id(cls, value: str) -> str:
        if not value.isprintable() or "/" in value:
            raise ValueError("must be printable text without '/'")
        return value

    @field_validator("timestamp", "expires_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)

    @model_validator(mode="after")
    def _check_metadata(self) -> CommandMessage:
        check_metadata(self.protocol, self.metadata)
        return self

    # ------------------------------------------------------------ derived values

    @property
    def timestamp_ms(self) -> int:
        return int(self.timestamp.timestamp() * 1000)

    @property
    def expires_ms(self) -> int | None:
        return None if self.expires_at is None else int(self.expires_at.timestamp() * 1000)

    def to_json(self) -> dict[str, Any]:
        """The command as plain JSON (what goes on the bus and what a parser receives)."""
        return self.model_dump(mode="json")


def check_metadata(protocol: str, metadata: dict[str, Any]) -> None:
    """Type checks for the protocol keys that are present (raises ``ValueError``)."""
    if protocol == "mqtt":
        _check_mqtt(metadata)
    else:
        _check_coap(metadata)


def _check_mqtt(metadata: dict[str, Any]) -> None:
    topic = metadata.get("topic")
    if topic is not None and (
        not isinstance(topic, str)
        or not topic
        or "#" in topic
        or "+" in topic
        or "\x00" in topic
        or len(topic.encode()) > MAX_TOPIC_BYTES
    ):
        raise ValueError(
            "metadata.topic must be a non-empty MQTT topic without wildcards or NUL "
            f"characters, at most {MAX_TOPIC_BYTES:,} bytes"
        )
    qos = metadata.get("qos")
    if qos is not None and (isinstance(qos, bool) or qos not in (0, 1, 2)):
        raise ValueError("metadata.qos must be 0, 1 or 2")
    if not isinstance(metadata.get("retain", False), bool):
        raise ValueError("metadata.retain must be true or false")
    ack = metadata.get("ack")
    if ack is not None and ack not in ACK_MODES:
        raise ValueError(f"metadata.ack must be one of {', '.join(ACK_MODES)}")


def _check_coap(metadata: dict[str, Any]) -> None:
    path = metadata.get("path")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise ValueError("metadata.path must be a string starting with '/'")
    if not isinstance(metadata.get("confirmable", True), bool):
        raise ValueError("metadata.confirmable must be true or false")


def describe(exc: ValidationError) -> str:
    """One line per problem: ``field: what is wrong``."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "command"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return "invalid command: " + "; ".join(problems)
