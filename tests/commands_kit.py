"""What the connector tests share: waiting for a condition, and reading where commands
are — in process (a rig holding the platform) or through a running server's CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fleetcloud.commands import lifecycle
from fleetcloud.platform import Platform
from tests.servers.fleetcloud import Server, cli

DEADLINE = 30.0


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something truthy (or fail at the deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s (last: {value!r})")
        await asyncio.sleep(0.05)


class CommandReads:
    """Status reads for a test rig that has ``platform``."""

    platform: Platform

    async def status(self, request_id: str) -> str | None:
        command = await self.platform.store.read(lifecycle.get(request_id))
        return None if command is None else command.status.value

    async def until(self, request_id: str, *statuses: str) -> lifecycle.StoredCommand:
        async def reached() -> lifecycle.StoredCommand | None:
            command = await self.platform.store.read(lifecycle.get(request_id))
            return command if command is not None and command.status.value in statuses else None

        result: lifecycle.StoredCommand = await eventually(reached)
        return result


def cli_statuses(server: Server, device: str, token: str) -> dict[str, str]:
    """A device's commands and their statuses, as ``fleetcloud commands`` lists them."""
    found = json.loads(cli("commands", device, "--url", server.url, "--token", token, "--json"))
    return {c["request_id"]: c["status"] for c in found}


async def until_statuses(server: Server, device: str, token: str, wanted: dict[str, str]) -> None:
    """Wait until ``fleetcloud commands`` shows each command in ``wanted`` in its status."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        now = await asyncio.to_thread(cli_statuses, server, device, token)
        if all(now.get(k) == v for k, v in wanted.items()):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"statuses {now} never became {wanted}")
        await asyncio.sleep(0.2)
