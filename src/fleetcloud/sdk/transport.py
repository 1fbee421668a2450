"""The seam between an app and the platform: the data API, behind a small interface.

``Transport`` is everything the SDK asks of the platform. ``HttpTransport`` speaks the
HTTP data API (docs/api.md) with the invocation's token; ``fleetcloud.sdk.testing``
swaps in an in-memory fake. Nothing else in the SDK does I/O.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

import httpx

from fleetcloud.core import jsonish
from fleetcloud.core.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from fleetcloud.sdk.codec import encode
from fleetcloud.sdk.errors import DataApiUnavailable

JSON = Any


class Transport(Protocol):
    """The data API operations an app uses. Ids are ints; bodies are the API's JSON."""

    async def publish(self, agent_id: int, channel: str, data: JSON) -> dict[str, Any]:
        """Append a message (merging it into the aggregate); returns the Message JSON."""
        ...

    async def update_aggregate(
        self, agent_id: int, channel: str, data: JSON, replace: str | None = None
    ) -> dict[str, Any]:
        """Merge-patch the aggregate (``replace`` swaps one subtree); returns Aggregate JSON."""
        ...

    async def get_aggregate(self, agent_id: int, channel: str) -> dict[str, Any]:
        """The Aggregate JSON (``{"data", "attachments", "last_updated"}``); ``NotFound`` if
        the channel does not exist."""
        ...

    async def list_agents(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The organisation's agents (``{"id", "name", "kind", …}``)."""
        ...

    async def aclose(self) -> None: ...


STATUS_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: TooManyRequests,
}


def channel_path(agent_id: int, channel: str) -> str:
    # Slashes in a name are escaped, so a name ending in "aggregate" stays unambiguous.
    return f"/api/agents/{agent_id}/channels/{quote(channel, safe='')}"


class HttpTransport:
    """The data API over HTTP with ``Authorization: Bearer <token>``.

    Pass ``client`` to share a connection pool across invocations (its owner closes it);
    otherwise the transport opens its own and closes it in ``aclose``.
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._owned = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def request(
        self, method: str, path: str, *, body: JSON = None, params: dict[str, str] | None = None
    ) -> JSON:
        content = None if body is None else encode(body, "the request body")
        headers = dict(self._headers)
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self._client.request(
                method, self.api_url + path, content=content, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise DataApiUnavailable(f"cannot reach the data API at {self.api_url}: {exc}") from exc
        if response.status_code >= 400:
            raise api_error(response)
        return jsonish.loads(response.content) if response.content else None

    async def publish(self, agent_id: int, channel: str, data: JSON) -> dict[str, Any]:
        path = channel_path(agent_id, channel) + "/messages"
        result: dict[str, Any] = await self.request("POST", path, body={"data": data})
        return result

    async def update_aggregate(
        self, agent_id: int, channel: str, data: JSON, replace: str | None = None
    ) -> dict[str, Any]:
        params = {"replace": replace} if replace else None
        path = channel_path(agent_id, channel) + "/aggregate"
        result: dict[str, Any] = await self.request("PATCH", path, body=data, params=params)
        return result

    async def get_aggregate(self, agent_id: int, channel: str) -> dict[str, Any]:
        path = channel_path(agent_id, channel) + "/aggregate"
        result: dict[str, Any] = await self.request("GET", path)
        return result

    async def list_agents(self, kind: str | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.request(
            "GET", "/api/agents", params={"kind": kind} if kind else None
        )
        return found

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


def api_error(response: httpx.Response) -> ApiError:
    """The fleetcloud error for a 4xx/5xx answer, with the server's message."""
    try:
        message = str(jsonish.loads(response.content).get("message"))
    except (ValueError, AttributeError):
        message = f"HTTP {response.status_code}: {response.text[:200]}"
    error = STATUS_ERRORS.get(response.status_code, ApiError)(message)
    error.status = response.status_code
    return error
