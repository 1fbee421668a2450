"""A small client for a running fleetcloud server (used by the CLI and the tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import websockets

from fleetcloud.core import jsonish
from fleetcloud.core.errors import ApiError, FleetError


class Client:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FleetError(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            error = ApiError(_message(response))
            error.status = response.status_code
            raise error
        return response.json() if response.content else None

    def publish(self, agent_id: str | int, channel: str, data: Any) -> Any:
        path = f"/api/agents/{agent_id}/channels/{quote(channel, safe='/')}/messages"
        return self.request("POST", path, json={"data": data})

    def channels(self, agent_id: str | int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.request("GET", f"/api/agents/{agent_id}/channels")
        return found


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message"))
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"


async def tail_channels(
    url: str, token: str, agent_id: str, names: list[str], echo: Callable[[str], None]
) -> None:
    """Print dispatches for ``names`` as they happen, heartbeating as the server asks.
    Runs until the connection ends, which is reported as a ``FleetError``."""
    base = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    try:
        async with websockets.connect(base + "/api/gateway") as socket:
            hello = jsonish.loads(await socket.recv())
            interval = hello["d"]["heartbeat_interval"] / 1000
            await socket.send(jsonish.dumps_str({"op": 2, "d": {"token": token}}))
            for name in names:
                subscribe = {"op": 12, "d": {"agent_id": agent_id, "channel_name": name}}
                await socket.send(jsonish.dumps_str(subscribe))

            async def heartbeat() -> None:
                with contextlib.suppress(websockets.ConnectionClosed):
                    while True:
                        await asyncio.sleep(interval * 0.8)
                        await socket.send(jsonish.dumps_str({"op": 1, "d": None}))

            async with asyncio.TaskGroup() as tasks:
                beat = tasks.create_task(heartbeat(), name="tail-heartbeat")
                async for raw in socket:
                    _show(jsonish.loads(raw), echo)
                beat.cancel()
            reason = f"{socket.close_code} {socket.close_reason or ''}".strip()
    except* (OSError, websockets.WebSocketException) as group:
        raise FleetError(f"lost the connection to {url}: {group.exceptions[0]}") from group
    raise FleetError(f"the server closed the connection ({reason})")


def _show(frame: dict[str, Any], echo: Callable[[str], None]) -> None:
    if frame.get("op") == 0 and frame.get("t") in ("MessageCreate", "AggregateUpdate"):
        echo(_describe(frame))
    elif frame.get("op") == 15:
        echo(f"error: {frame['d'].get('message')}")


def _describe(frame: dict[str, Any]) -> str:
    data = frame["d"]
    name = data["channel"]["name"]
    if frame["t"] == "MessageCreate":
        return f"[{name}] message {data['id']}: {jsonish.dumps_str(data['data'])}"
    return f"[{name}] aggregate: {jsonish.dumps_str(data['aggregate']['data'])}"
