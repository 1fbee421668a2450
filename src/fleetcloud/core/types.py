"""Domain types shared by the store, the bus and the API. Plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class AgentKind(StrEnum):
    ORGANISATION = "organisation"
    DEVICE = "device"
    USER = "user"
    APP = "app"


class Role(StrEnum):
    """What a token may do inside its organisation."""

    ADMIN = "admin"  # everything in the organisation
    DEVICE = "device"  # its own agent's channels; reads the organisation's public ones
    APP_INVOCATION = "app-invocation"  # its agent plus the agents in its scopes, briefly


@dataclass(frozen=True, slots=True)
class Organisation:
    id: int
    name: str
    agent_id: int


@dataclass(frozen=True, slots=True)
class Agent:
    id: int
    organisation_id: int
    kind: AgentKind
    name: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the agent and organisation a token speaks for, and its role."""

    agent_id: int
    organisation_id: int
    role: Role
    scopes: frozenset[int] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(slots=True)
class Channel:
    id: int
    agent_id: int
    name: str
    is_private: bool = False
    message_schema: dict[str, Any] | None = None
    aggregate_schema: dict[str, Any] | None = None
    aggregate: Any = None
    aggregate_attachments: list[Any] = field(default_factory=list)
    last_updated: int | None = None


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    channel_id: int
    agent_id: int
    channel_name: str
    author_id: int
    data: Any
    attachments: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One record on the bus: ``topic`` and ``key`` route it, ``value`` is plain JSON."""

    topic: str
    key: str
    value: dict[str, Any]


CHANNEL_EVENTS = "channel_events"
"""The bus topic that carries MessageCreate / AggregateUpdate, keyed by agent id."""
