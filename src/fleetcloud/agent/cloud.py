"""The agent's two HTTP clients: the jobs API and the data API.

Both translate httpx's errors at this seam: no answer, 5xx and 429 become
``CloudUnreachable`` (retry later), any other 4xx ``CloudRefused`` (do not repeat it).
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from fleetcloud.agent.errors import CloudRefused, CloudUnreachable, UpdateRefused
from fleetcloud.core import jsonish

API_KEY_HEADER = "X-Device-API-Key"
NO_PENDING_JOBS = "No pending jobs"
H = TypeVar("H", bound="_Http")


def describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


class _Http:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self: H) -> H:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CloudUnreachable(f"cannot reach {self.base_url}: {describe(exc)}") from exc
        status = response.status_code
        if status >= 500 or status == 429:
            raise CloudUnreachable(
                f"{self.base_url} answered {status}: {message(response)}", status
            )
        if status >= 400:
            raise CloudRefused(message(response), status)
        if not response.content:
            return None
        try:
            return jsonish.loads(response.content)
        except ValueError as exc:
            raise CloudUnreachable(f"{self.base_url} answered with something not JSON") from exc


def message(response: httpx.Response) -> str:
    try:
        body = jsonish.loads(response.content)
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"HTTP {response.status_code}"


class JobsClient(_Http):
    """``CLOUD_API_URL`` (…/api/v1), authenticated with ``X-Device-API-Key``."""

    def __init__(
        self,
        cloud_api_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        super().__init__(cloud_api_url, headers, timeout, transport)
        self.timeout = timeout

    async def next_job(self, uuid: str, wait: float = 0) -> dict[str, Any] | None:
        """The next job for this device, or None. ``wait`` asks the server to hold the
        request up to that many seconds until a job is queued (long polling)."""
        params = {"wait": f"{wait:g}"} if wait > 0 else {}
        timeout = httpx.Timeout(self.timeout, read=wait + self.timeout)
        body = await self.call(
            "GET", f"/devices/{quote(uuid)}/jobs/next", params=params, timeout=timeout
        )
        if not isinstance(body, dict) or not body.get("job_id"):
            return None
        return body

    async def update_status(self, uuid: str, job_id: str, body: dict[str, Any]) -> Any:
        """``PATCH …/status``; a 409 (the execution moved on) is ``UpdateRefused``."""
        path = f"/devices/{quote(uuid)}/jobs/{quote(str(job_id))}/status"
        try:
            return await self.call("PATCH", path, json=body)
        except CloudRefused as exc:
            if exc.status == 409:
                raise UpdateRefused(exc.message, exc.status) from exc
            raise

    async def executions(self, uuid: str, status: str) -> list[dict[str, Any]]:
        """This device's executions in ``status`` (``GET /devices/{uuid}/jobs``)."""
        found = await self.call("GET", f"/devices/{quote(uuid)}/jobs", params={"status": status})
        return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []

    async def register(self, provisioning_key: str, name: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"provisioning_key": provisioning_key}
        if name:
            body["name"] = name
        answer = await self.call("POST", "/device/register", json=body)
        if not isinstance(answer, dict) or not answer.get("api_key"):
            raise CloudUnreachable("the registration answer has no api_key")
        return answer


class DataClient(_Http):
    """The data API (``/api/…``), with the device's key as its bearer token."""

    def __init__(
        self,
        server_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(server_url, {"Authorization": f"Bearer {token}"}, timeout, transport)

    async def publish_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``POST /api/agents/messages``: one result per item, in order."""
        return await self._batch("POST", "/api/agents/messages", items)

    async def patch_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``PATCH /api/agents/aggregates``: merge-patches, one result per item, in order."""
        return await self._batch("PATCH", "/api/agents/aggregates", items)

    async def _batch(
        self, method: str, path: str, items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        answer = await self.call(method, path, json={"items": items})
        results = answer.get("items") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise CloudUnreachable("the batch answer does not list every item")
        return results

    async def get_aggregate(
        self, agent_id: str, channel: str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """A channel's Aggregate JSON (``{"data", "attachments", "last_updated"}``); a
        channel that does not exist is ``CloudRefused`` with status 404."""
        path = f"/api/agents/{quote(agent_id)}/channels/{quote(channel, safe='')}/aggregate"
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        answer = await self.call("GET", path, **extra)
        if not isinstance(answer, dict):
            raise CloudUnreachable("the aggregate answer is not a JSON object")
        return answer
