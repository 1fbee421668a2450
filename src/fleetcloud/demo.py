"""``fleetcloud serve --demo``: a demo organisation with a living fleet, so every page and
endpoint has something real to show:

- a simulator publishes plausible sensor readings and connection pings for each device;
- two processors of the apps runtime (``fleetcloud.demo_apps.demo_farm``, deployed and
  installed at start) keep ``pump-station-1``'s and ``cold-room-3``'s UI (``ui_state``),
  tags and alerts up to date and react to what users do in the console (``ui_cmds``);
- ``weather-mast`` runs a real fleetcloud agent (in this process, against the server's own
  URL, its data in a temporary directory), so a job sent to it — the built-in
  ``health-check`` runs ``uptime``, ``df -h`` and ``free -m`` — ends ``SUCCEEDED``. Jobs for
  the other devices wait for an agent that never comes and end ``TIMED_OUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from fleetcloud import demo_apps
from fleetcloud.agent.config import AgentConfig
from fleetcloud.agent.main import Agent as JobAgent
from fleetcloud.apps import repo as apps_repo
from fleetcloud.apps.dispatcher import wake
from fleetcloud.apps.installations import check_agent, check_deployment
from fleetcloud.apps.model import App, Version
from fleetcloud.apps.packaging import Manifest, Package, inspect_package, read_manifest
from fleetcloud.apps.repo import InstallRequest
from fleetcloud.apps.service import local_url
from fleetcloud.core.errors import FleetError
from fleetcloud.core.types import Agent, AgentKind, Organisation, Principal, Role
from fleetcloud.demo_apps.demo_farm import config as demo_config
from fleetcloud.jobs import devices as fleet_groups
from fleetcloud.platform import Platform
from fleetcloud.sdk.connection import ConnectionStatus, ConnectionType, ping_payload
from fleetcloud.store import admin
from fleetcloud.store import agents as repo
from fleetcloud.store.base import Store
from fleetcloud.store.channels import PublishItem

log = logging.getLogger("fleetcloud.demo")
agent_log = logging.getLogger("fleetcloud.demo.agent")

DEMO_ORGANISATION = "Demo Farms"
DEVICES = ("pump-station-1", "weather-mast", "cold-room-3")
GROUPS = {"north-field": ("pump-station-1", "weather-mast"), "cold-chain": ("cold-room-3",)}
OFFLINE_AFTER = timedelta(minutes=1)
AGENT_DEVICE = "weather-mast"
AGENT_POLLING_MS = 2000
AGENT_LONG_POLL_SECONDS = 4.0  # below the server's 5 s graceful shutdown
AGENT_GRACE_SECONDS = 5.0
DEMO_PROJECT = "demo_farm"
PROCESSORS = {"pump_controller": "pump-station-1", "cold_room": "cold-room-3"}
MAX_PACKAGE_BYTES = 1024 * 1024


@dataclass
class DemoFleet:
    organisation: Organisation
    devices: list[Agent]
    admin_token: str
    agent_device: Agent
    agent_key: str  # the agent device's API key


async def prepare(platform: Platform) -> DemoFleet:
    """Find or create the demo organisation, devices and groups; mint a fresh admin token."""
    store = platform.store
    organisation = await store.read(admin.find_organisation(DEMO_ORGANISATION))
    if organisation is None:
        organisation = await store.create_organisation(DEMO_ORGANISATION)
    devices = await store.read(repo.list_agents(organisation.id, AgentKind.DEVICE))
    for name in DEVICES[len(devices) :]:
        devices.append(await store.create_agent(organisation.id, AgentKind.DEVICE, name))
    by_name = {d.name: d.id for d in devices}
    for group, members in GROUPS.items():
        if await store.read(fleet_groups.find_group(organisation.id, group)) is None:
            ids = [by_name[m] for m in members if m in by_name]
            await store.write(fleet_groups.create_group(organisation.id, group, "demo", ids))
    token = await store.create_token(
        Principal(organisation.agent_id, organisation.id, Role.ADMIN), label="demo"
    )
    agent_device = next((d for d in devices if d.name == AGENT_DEVICE), devices[0])
    key = await store.create_token(
        Principal(agent_device.id, organisation.id, Role.DEVICE), label="demo-agent"
    )
    return DemoFleet(organisation, devices, token, agent_device, key)


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


def ping(now_ms: int) -> dict[str, Any]:
    """What the SDK's ``ping_connection`` writes to ``doover_connection``."""
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    return ping_payload(
        online_at=now,
        now=now,
        connection_status=ConnectionStatus.continuous_online,
        connection_type=ConnectionType.continuous,
        offline_at=now + OFFLINE_AFTER,
        configured_offline_after=None,
        user_agent="fleetcloud-demo",
    )


async def simulate(
    platform: Platform, fleet: DemoFleet, stopping: asyncio.Event, period: float = 2.0
) -> None:
    step = 0
    while not stopping.is_set():
        now = int(time.time() * 1000)
        items = [
            PublishItem(d.id, "sensors", reading(d, step), d.id, ts=now) for d in fleet.devices
        ]
        items += [PublishItem(d.id, "doover_connection", ping(now), d.id) for d in fleet.devices]
        await platform.store.publish(items)
        step += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period)


# ---------------------------------------------------------------- the demo's processors


async def wait_until_serving(url: str, timeout: float = 60.0) -> None:
    """Return once the server answers (the demo starts before it listens)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            try:
                (await client.get(f"{url}/healthz")).raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise FleetError(
                        f"the server at {url} did not answer within {timeout:.0f} s"
                    ) from None
                await asyncio.sleep(0.1)


async def deploy_processors(platform: Platform, fleet: DemoFleet) -> None:
    """Deploy the demo farm's processors (a new version only when their source changed)
    and install each on its device, subscribed to ``sensors`` and ``ui_cmds``."""
    store = platform.store
    organisation = fleet.organisation.id
    data = demo_apps.package(DEMO_PROJECT)
    document = demo_apps.doover_config(DEMO_PROJECT)
    by_name = {d.name: d for d in fleet.devices}
    for app_name, device_name in PROCESSORS.items():
        device = by_name.get(device_name)
        if device is None:  # renamed or deleted since the demo made it
            log.warning("demo: no device %s for %s", device_name, app_name)
            continue
        manifest = read_manifest(document, app_name)
        package = inspect_package(data, manifest, max_unpacked=MAX_PACKAGE_BYTES)
        app, version = await up_to_date(store, organisation, manifest, package)
        installed = await store.read(apps_repo.list_installations(organisation, agent_id=device.id))
        if any(i.app_id == app.id for i in installed):
            continue
        check_agent(app, device)
        config = {"dv_proc_subscriptions": list(demo_config.SUBSCRIPTIONS)}
        next_fire = check_deployment(app, version, config, repo.now_ms())
        request = InstallRequest(organisation, app, version, device.id, app_name, config, next_fire)
        await store.write(apps_repo.install(request))
        log.info("demo: %s installed on %s", app_name, device_name)
    wake(store)


async def up_to_date(
    store: Store, organisation: int, manifest: Manifest, package: Package
) -> tuple[App, Version]:
    """The app's latest version, deployed anew only if it is not this package and entry."""
    app = await store.read(apps_repo.find_app(organisation, manifest.name))
    if app is not None and app.latest_version:
        version = await store.read(apps_repo.get_version(app.id, app.latest_version))
        if version.package_sha256 == package.sha256 and version.config == manifest.entry:
            return app, version
    deployed: tuple[App, Version] = await store.write(
        apps_repo.deploy(organisation, manifest, package)
    )
    return deployed


# ---------------------------------------------------------------- the demo's job agent


def agent_config(fleet: DemoFleet, url: str, data_dir: Path) -> AgentConfig:
    """The agent of ``AGENT_DEVICE``: cloud jobs on, long polls short enough that a
    stopping server is not held up, no local API (nothing on the device publishes)."""
    return AgentConfig(
        data_dir=data_dir,
        enable_cloud_jobs=True,
        enable_job_engine=True,
        cloud_api_url=f"{local_url(url)}/api/v1",
        server_url=local_url(url),
        polling_interval_ms=AGENT_POLLING_MS,
        long_poll_seconds=AGENT_LONG_POLL_SECONDS,
        device_uuid=str(fleet.agent_device.id),
        device_api_key=fleet.agent_key,
        local_api=False,
        grace_seconds=AGENT_GRACE_SECONDS,
        history_limit=50,
    )


async def run_agent(agent: JobAgent) -> None:
    code = await agent.run()
    if code:
        log.warning("demo: the job agent stopped with exit code %d", code)


async def run(platform: Platform, fleet: DemoFleet, url: str, agent: JobAgent) -> None:
    try:
        async with asyncio.TaskGroup() as tasks:
            # the demo stops when its agent is asked to (``stop``)
            tasks.create_task(simulate(platform, fleet, agent.stopping), name="demo-simulator")
            await wait_until_serving(local_url(url))
            await deploy_processors(platform, fleet)
            tasks.create_task(run_agent(agent), name="demo-job-agent")
    except* Exception:  # the server goes on without its demo; say why
        log.exception("the demo stopped")


def banner(fleet: DemoFleet, url: str) -> str:
    token = fleet.admin_token
    return (
        f"\nfleetcloud demo is running at {url}\n"
        f"  organisation: {fleet.organisation.name} ({fleet.organisation.id})\n"
        f"  admin token:  {token}\n"
        f"  devices:      {', '.join(f'{d.name} ({d.id})' for d in fleet.devices)}\n"
        f"  job agent:    {fleet.agent_device.name} runs one; try Jobs → New job\n"
        f"  web console:  {url}/ (sign in with the token above)\n"
        f"  try: curl -H 'Authorization: Bearer {token}' "
        f"{url}/api/agents/{fleet.devices[0].id}/channels/sensors/aggregate\n"
    )


@contextlib.asynccontextmanager
async def running(platform: Platform, url: str) -> AsyncIterator[DemoFleet]:
    fleet = await prepare(platform)
    print(banner(fleet, url), flush=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per agent poll
    with tempfile.TemporaryDirectory(prefix="fleetcloud-demo-agent-") as data_dir:
        agent = JobAgent(agent_config(fleet, url, Path(data_dir)), echo=agent_log.info)
        task = asyncio.create_task(run(platform, fleet, url, agent), name="demo")
        try:
            yield fleet
        finally:
            await stop(task, agent)


async def stop(task: asyncio.Task[None], agent: JobAgent) -> None:
    """Stop the agent as SIGTERM would (a running job may finish within its grace
    period) and the simulator with it; cancel whatever is left after that."""
    agent.request_stop("the server is stopping")
    try:
        await asyncio.wait_for(asyncio.shield(task), AGENT_GRACE_SECONDS + 2)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
