"""The apps feature's records and their JSON shapes (pure).

Ids are 64-bit integers, written as strings in JSON as everywhere in the API; times are
Unix milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fleetcloud.apps.packaging import APP_TYPES

SUBSCRIPTIONS_KEY = "dv_proc_subscriptions"
SCHEDULES_KEY = "dv_proc_schedules"
INGESTION_KEY = "dv_proc_ingestion"
PERMISSIONS_KEY = "dv_proc_extended_permissions"


class Status(StrEnum):
    """How an invocation ended, as the invocation log records it."""

    OK = "OK"  # the handler ran and returned
    SKIPPED = "SKIPPED"  # nothing to do (no such handler, or the app's own echo)
    ERROR = "ERROR"  # the handler (or its setup, config or writes) raised
    TIMED_OUT = "TIMED_OUT"  # ran past Timeout: the worker was killed
    FAILED = "FAILED"  # the worker died: exit, crash, memory cap, unloadable package

    @property
    def succeeded(self) -> bool:
        return self in (Status.OK, Status.SKIPPED)


@dataclass(frozen=True, slots=True)
class App:
    id: int
    organisation_id: int
    name: str
    display_name: str
    type: str
    latest_version: int
    created_ms: int
    updated_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "app_id": str(self.id),
            "organisation_id": str(self.organisation_id),
            "name": self.name,
            "display_name": self.display_name,
            "type": self.type,
            "kind": APP_TYPES[self.type],
            "latest_version": self.latest_version,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }


@dataclass(frozen=True, slots=True)
class Version:
    id: int
    app_id: int
    version: int
    package_sha256: str
    package_size: int
    handler: str
    timeout_seconds: int
    memory_mb: int
    config: dict[str, Any]
    created_ms: int

    @property
    def config_schema(self) -> dict[str, Any]:
        schema = self.config.get("config_schema")
        return schema if isinstance(schema, dict) else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "app_id": str(self.app_id),
            "version": self.version,
            "package_sha256": self.package_sha256,
            "package_size": self.package_size,
            "handler": self.handler,
            "timeout_seconds": self.timeout_seconds,
            "memory_mb": self.memory_mb,
            "config_schema": self.config_schema,
            "created_ms": self.created_ms,
        }


@dataclass(frozen=True, slots=True)
class Installation:
    id: int
    organisation_id: int
    app_id: int
    agent_id: int
    app_agent_id: int
    app_key: str
    deployment_config: dict[str, Any]
    ingestion_token: str | None
    mini_token: str | None
    created_ms: int
    updated_ms: int

    @property
    def subscriptions(self) -> frozenset[str]:
        channels = self.deployment_config.get(SUBSCRIPTIONS_KEY) or []
        if not isinstance(channels, list):
            return frozenset()
        return frozenset(c for c in channels if isinstance(c, str))

    @property
    def schedule(self) -> str:
        value = self.deployment_config.get(SCHEDULES_KEY)
        return value if isinstance(value, str) else "disabled"

    @property
    def ingestion(self) -> dict[str, Any]:
        value = self.deployment_config.get(INGESTION_KEY)
        return value if isinstance(value, dict) else {}

    @property
    def permissions(self) -> dict[str, Any]:
        value = self.deployment_config.get(PERMISSIONS_KEY)
        return value if isinstance(value, dict) else {}

    def to_json(self, *, secrets: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": str(self.id),
            "installation_id": str(self.id),
            "organisation_id": str(self.organisation_id),
            "app_id": str(self.app_id),
            "agent_id": str(self.agent_id),
            "app_agent_id": str(self.app_agent_id),
            "app_key": self.app_key,
            "deployment_config": self.deployment_config,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }
        if self.ingestion_token is not None:
            body["ingestion_path"] = f"/api/ingestion/{self.id}"
            if secrets:
                body["ingestion_token"] = self.ingestion_token
                body["mini_token"] = self.mini_token
        return body


@dataclass(slots=True)
class Delivery:
    """An event on its way to an installation's handler ``op``."""

    id: int
    installation_id: int
    op: str
    event_id: str
    data: dict[str, Any]
    attempt: int = 0  # attempts made so far
    due_ms: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Invocation:
    """One attempt, as the invocation log keeps it."""

    id: int
    installation_id: int
    app_id: int
    version: int
    agent_id: int
    op: str
    event_id: str
    attempt: int
    status: Status
    started_us: int
    duration_ms: float
    error: str | None
    logs: str
    summary: dict[str, Any] = field(default_factory=dict)
    created_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "installation_id": str(self.installation_id),
            "app_id": str(self.app_id),
            "version": self.version,
            "agent_id": str(self.agent_id),
            "handler": self.op,
            "event_id": self.event_id,
            "attempt": self.attempt,
            "status": self.status.value,
            "started_ms": self.started_us / 1000,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "logs": self.logs,
            "summary": self.summary,
            "created_ms": self.created_ms,
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    installation_id: int
    op: str
    event_id: str
    data: dict[str, Any]
    attempts: int
    error: str
    created_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "installation_id": str(self.installation_id),
            "handler": self.op,
            "event_id": self.event_id,
            "event": self.data,
            "attempts": self.attempts,
            "error": self.error,
            "created_ms": self.created_ms,
        }
