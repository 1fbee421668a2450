"""``Application``: the base class of processors and integrations.

An app overrides the handlers it needs; ``run_app`` (fleetcloud.sdk.runner) binds it to one
invocation — who it is, its config, its tags and UI, a data API client holding the
invocation's token — and calls ``setup()``, the handler and ``close()``.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, Protocol

from fleetcloud.core.errors import NotFound
from fleetcloud.sdk.config import Schema
from fleetcloud.sdk.connection import ConnectionStatus, ConnectionType, ping_payload, utcnow
from fleetcloud.sdk.data import CONNECTION_CHANNEL, DataClient, WriteGuard
from fleetcloud.sdk.envelope import Upgrade
from fleetcloud.sdk.errors import AppError
from fleetcloud.sdk.events import (
    AggregateUpdateEvent,
    DeploymentEvent,
    IngestionEndpointEvent,
    ManualInvokeEvent,
    MessageCreateEvent,
    ScheduleEvent,
)
from fleetcloud.sdk.tags import TagBuffer
from fleetcloud.sdk.transport import Transport
from fleetcloud.sdk.ui_manager import UIManager


class _Unbound:
    """The transport before an invocation starts: every call explains itself."""

    def __getattr__(self, name: str) -> Any:
        raise AppError("the data API is only available during an invocation (run_app)")


class _Publisher(Protocol):
    """What ``DeviceAgent`` needs of an app (a processor's or a device app's)."""

    agent_id: int
    api: DataClient


class DeviceAgent:
    """``app.device_agent``: the device apps' publishing call (processors have it too, for
    code shared with device apps)."""

    def __init__(self, app: _Publisher) -> None:
        self._app = app

    async def publish_to_channel_async(self, channel_name: str, data: Any) -> None:
        """Publish to a channel of the app's own agent (JSON text is decoded first)."""
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except ValueError:
                data = data.decode() if isinstance(data, bytes) else data
        await self._app.api.publish_message(self._app.agent_id, channel_name, data)


class Application:
    """Base class of an app. Attributes are set when an invocation starts:

    ``agent_id`` (the agent it is installed on), ``app_key``, ``organisation_id``,
    ``app_id``, ``installation_id``, ``display_name``, ``deployment_config`` (raw),
    ``config`` (the schema with values bound), ``api``, ``ui_manager``,
    ``connection_data`` (the ``doover_connection`` aggregate).
    """

    config: Any

    def __init__(self, config: Schema | None = None, *args: Any, **kwargs: Any) -> None:
        self.config = config
        self.agent_id: int = 0
        self.app_key: str = ""
        self.organisation_id: int | None = None
        self.app_id: int | None = None
        self.installation_id: int | None = None
        self.display_name: str | None = None
        self.deployment_config: dict[str, Any] = {}
        self.connection_data: dict[str, Any] = {}
        self.api = DataClient(_Unbound())
        self.ui_manager = UIManager()
        self._tags = TagBuffer("", {})
        self._devices: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------ lifecycle

    async def setup(self) -> None:
        """Called at the start of every invocation, before the handler."""

    async def close(self) -> None:
        """Called at the end of every invocation, after tags are flushed and the UI pushed."""

    # ------------------------------------------------------------ handlers

    async def on_message_create(self, event: MessageCreateEvent) -> None:
        pass

    async def on_aggregate_update(self, event: AggregateUpdateEvent) -> None:
        pass

    async def on_schedule(self, event: ScheduleEvent) -> None:
        pass

    async def on_ingestion_endpoint(self, event: IngestionEndpointEvent) -> None:
        pass

    async def on_deployment(self, event: DeploymentEvent) -> None:
        pass

    async def on_manual_invoke(self, event: ManualInvokeEvent) -> None:
        pass

    def parse_ingestion_event_payload(self, payload: str) -> Any:
        """The ingestion body arrives base64-wrapped; by default it is JSON."""
        raw = base64.b64decode(payload, validate=True)
        return json.loads(raw)

    # ------------------------------------------------------------ state

    async def get_tag(self, key: str, default: Any = None, app_key: str | None = None) -> Any:
        """A tag of this app (or of ``app_key``'s app on the same agent); ``default`` if unset.

        Reads the invocation's snapshot plus this invocation's own ``set_tag`` calls.
        """
        return self._tags.get(key, default, app_key)

    async def set_tag(self, key: str, value: Any) -> None:
        """Set a tag (``None`` clears it); all changes are written once, at the end."""
        self._tags.set(key, value)

    @property
    def device_agent(self) -> DeviceAgent:
        return DeviceAgent(self)

    async def ping_connection(
        self,
        online_at: datetime | None = None,
        connection_status: ConnectionStatus = ConnectionStatus.periodic_unknown,
        connection_type: ConnectionType | None = None,
        offline_at: datetime | None = None,
    ) -> None:
        """Record that the device was online at ``online_at`` (now by default)."""
        now = utcnow()
        config = self.connection_data.get("config")
        payload = ping_payload(
            online_at=online_at or now,
            now=now,
            connection_status=connection_status,
            connection_type=connection_type,
            offline_at=offline_at,
            configured_offline_after=(config or {}).get("offline_after")
            if isinstance(config, dict)
            else None,
            user_agent=f"fleetcloud-processor,app_key={self.app_key}",
        )
        await self.api.publish_message(self.agent_id, CONNECTION_CHANNEL, payload)

    async def get_device_agent(self, device_id: int | str) -> int:
        """The agent id of a device of the organisation, by its agent id or its name."""
        if self._devices is None:
            self._devices = await self.api.list_agents("device")
        wanted = str(device_id)
        for agent in self._devices:
            if str(agent.get("id")) == wanted:
                return int(agent["id"])
        for agent in self._devices:
            if agent.get("name") == wanted:
                return int(agent["id"])
        raise NotFound(f"no device {device_id!r} (by agent id or name) in this organisation")

    # ------------------------------------------------------------ binding (run_app)

    def _bind(self, upgrade: Upgrade, transport: Transport) -> None:
        self.agent_id = upgrade.agent_id
        self.app_key = upgrade.app_key
        self.organisation_id = upgrade.organisation_id
        self.app_id = upgrade.app_id
        self.installation_id = upgrade.installation_id
        self.deployment_config = upgrade.deployment_config
        self.connection_data = upgrade.connection_data
        self.display_name = upgrade.display_name or _text(
            upgrade.deployment_config.get("APP_DISPLAY_NAME")
        )
        self.api = DataClient(transport)
        self._tags = TagBuffer(upgrade.app_key, upgrade.tag_values)
        self._devices = None
        self.ui_manager = UIManager(upgrade.app_key, self.display_name)
        self.ui_manager.bind(upgrade.app_key, upgrade.agent_id, self.api)
        self.ui_manager.load_state(upgrade.ui_state, upgrade.ui_cmds)
        if isinstance(self.config, Schema):
            self.config.load(upgrade.deployment_config, upgrade.app_key)

    def _guard(self, guard: WriteGuard) -> None:
        self.api.guard = guard


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
