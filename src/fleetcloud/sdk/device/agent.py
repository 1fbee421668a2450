"""A device app's transport: the device agent's local API (docs/agent.md).

``AgentTransport`` talks to ``fleetcloud agent`` on the same machine
(``http://127.0.0.1:48484``, or ``FLEETCLOUD_AGENT_URL``) and implements the SDK's
``Transport`` for the device's own channels:

- a publish or an aggregate patch is accepted once the agent has it on disk; the agent
  forwards it to the cloud in order, so it survives a cloud outage and an agent restart;
- a read is the agent's view of an aggregate: the cloud's (or, while the cloud is away,
  the agent's last copy), with the writes still waiting in the agent's queue merged on top.

``fleetcloud.sdk.device.testing.FakeLocalAgent`` replaces it in unit tests.
"""

from __future__ import annotations

import os
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from fleetcloud.core import jsonish
from fleetcloud.core.errors import NotFound
from fleetcloud.core.ids import timestamp_ms
from fleetcloud.sdk.codec import encode, normalize
from fleetcloud.sdk.errors import AgentUnavailable, AppError, DataApiUnavailable
from fleetcloud.sdk.events import as_id
from fleetcloud.sdk.transport import Transport, api_error

AGENT_URL_ENV = "FLEETCLOUD_AGENT_URL"
DEFAULT_AGENT_URL = "http://127.0.0.1:48484"
JSON = Any


class DeviceTransport(Transport, Protocol):
    """The SDK's ``Transport``, plus who the device is."""

    async def device(self) -> dict[str, Any]:
        """``GET /v2/device``: ``{"uuid", "agent_id", "provisioned", …}``."""
        ...


def check_own(own: int | None, agent_id: int) -> None:
    """A device app reaches its own device's channels only (``0`` means "this device")."""
    if agent_id not in (0, own):
        raise NotFound(
            f"a device app reads and writes its own device's channels only (agent {own}), "
            f"not agent {agent_id}'s"
        )


def no_agent_listing() -> AppError:
    return AppError(
        "a device app cannot list the organisation's agents: the device agent's local API "
        "serves this device only"
    )


def channel_path(channel: str) -> str:
    return f"/v2/channels/{quote(channel, safe='/')}"


class AgentTransport:
    """The device agent's local API over HTTP (no token: it listens on 127.0.0.1 only)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = (url or os.environ.get(AGENT_URL_ENV) or DEFAULT_AGENT_URL).rstrip("/")
        self.agent_id: int | None = None
        self._owned = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def device(self) -> dict[str, Any]:
        found = await self._request("GET", "/v2/device")
        info: dict[str, Any] = found if isinstance(found, dict) else {}
        self.agent_id = as_id(info.get("agent_id"))
        return info

    async def publish(self, agent_id: int, channel: str, data: JSON) -> dict[str, Any]:
        """Queue a message with the agent; returns the Message JSON it will have."""
        check_own(self.agent_id, agent_id)
        answer = await self._request("POST", channel_path(channel) + "/messages", {"data": data})
        message_id = as_id(answer.get("message_id")) if isinstance(answer, dict) else None
        owner = None if self.agent_id is None else str(self.agent_id)
        return {
            "id": None if message_id is None else str(message_id),
            "author_id": owner,
            "channel": {"agent_id": owner, "name": channel},
            "data": normalize(data, "the message"),
            "attachments": [],
            "timestamp": None if message_id is None else timestamp_ms(message_id),
        }

    async def update_aggregate(
        self, agent_id: int, channel: str, data: JSON, replace: str | None = None
    ) -> dict[str, Any]:
        """Queue a merge-patch with the agent. The result is the patch, not the new state
        (the agent has not applied it yet; ``get_aggregate`` shows it merged)."""
        check_own(self.agent_id, agent_id)
        params = {"replace": replace} if replace else None
        await self._request("PATCH", channel_path(channel) + "/aggregate", data, params)
        return {"data": normalize(data, "the aggregate patch"), "attachments": []}

    async def get_aggregate(self, agent_id: int, channel: str) -> dict[str, Any]:
        check_own(self.agent_id, agent_id)
        found: dict[str, Any] = await self._request("GET", channel_path(channel) + "/aggregate")
        return found

    async def list_agents(self, kind: str | None = None) -> list[dict[str, Any]]:
        raise no_agent_listing()

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def _request(
        self, method: str, path: str, body: JSON = None, params: dict[str, str] | None = None
    ) -> JSON:
        content = None if body is None else encode(body, "the request body")
        headers = {"Content-Type": "application/json"} if content is not None else {}
        try:
            response = await self._client.request(
                method, self.url + path, content=content, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise AgentUnavailable(
                f"the device agent's local API at {self.url} does not answer "
                f"({str(exc) or type(exc).__name__}); is `fleetcloud agent` running?"
            ) from exc
        if response.status_code == 503:  # the cloud is away and the agent has no copy
            raise DataApiUnavailable(api_error(response).message)
        if response.status_code >= 400:
            raise api_error(response)
        return jsonish.loads(response.content) if response.content else None
