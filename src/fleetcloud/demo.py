"""``fleetcloud serve --demo``: a demo organisation with a few devices whose simulator
publishes plausible sensor data, so every page and endpoint has something to show."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fleetcloud.core.types import Agent, AgentKind, Organisation, Principal, Role
from fleetcloud.platform import Platform
from fleetcloud.store import admin
from fleetcloud.store import agents as repo
from fleetcloud.store.channels import PublishItem

DEMO_ORGANISATION = "Demo Farms"
DEVICES = ("pump-station-1", "weather-mast", "cold-room-3")


@dataclass
class DemoFleet:
    organisation: Organisation
    devices: list[Agent]
    admin_token: str


async def prepare(platform: Platform) -> DemoFleet:
    """Find or create the demo organisation and devices; mint a fresh admin token."""
    store = platform.store
    organisation = await store.read(admin.find_organisation(DEMO_ORGANISATION))
    if organisation is None:
        organisation = await store.create_organisation(DEMO_ORGANISATION)
    devices = await store.read(repo.list_agents(organisation.id, AgentKind.DEVICE))
    for name in DEVICES[len(devices) :]:
        devices.append(await store.create_agent(organisation.id, AgentKind.DEVICE, name))
    token = await store.create_token(
        Principal(organisation.agent_id, organisation.id, Role.ADMIN), label="demo"
    )
    return DemoFleet(organisation, devices, token)


def reading(device: Agent, step: int) -> dict[str, object]:
    """A plausible reading: a daily cycle plus noise, different per device."""
    phase = (device.id % 97) / 97 * math.tau
    cycle = math.sin(step / 60 * math.tau + phase)
    return {
        "temperature": round(18 + 6 * cycle + random.uniform(-0.3, 0.3), 2),
        "humidity": round(55 - 15 * cycle + random.uniform(-1, 1), 1),
        "battery": round(max(3.3, 4.2 - step * 0.0005), 3),
        "rssi": random.randint(-95, -60),
    }


async def simulate(platform: Platform, fleet: DemoFleet, period: float = 2.0) -> None:
    step = 0
    while True:
        items = [
            PublishItem(d.id, "sensors", reading(d, step), d.id, ts=int(time.time() * 1000))
            for d in fleet.devices
        ]
        items += [
            PublishItem(d.id, "doover_connection", {"status": "online", "last_seen": i.ts}, d.id)
            for d, i in zip(fleet.devices, items, strict=True)
        ]
        await platform.store.publish(items)
        step += 1
        await asyncio.sleep(period)


@contextlib.asynccontextmanager
async def running(platform: Platform, url: str) -> AsyncIterator[DemoFleet]:
    fleet = await prepare(platform)
    print(
        f"\nfleetcloud demo is running at {url}\n"
        f"  organisation: {fleet.organisation.name} ({fleet.organisation.id})\n"
        f"  admin token:  {fleet.admin_token}\n"
        f"  devices:      {', '.join(f'{d.name} ({d.id})' for d in fleet.devices)}\n"
        f"  try: curl -H 'Authorization: Bearer {fleet.admin_token}' "
        f"{url}/api/agents/{fleet.devices[0].id}/channels/sensors/aggregate\n",
        flush=True,
    )
    task = asyncio.create_task(simulate(platform, fleet), name="demo-simulator")
    try:
        yield fleet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
