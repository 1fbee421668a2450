"""``fleetcloud serve --demo``: a demo organisation with a few devices whose simulator
publishes plausible sensor data, so every page and endpoint has something to show.

Two devices also show a UI in the web console (``ui_state``, built with the SDK's ``ui``
components) and react to what users do there (``ui_cmds``): ``DemoPanel`` is a small
in-process stand-in for a processor app, kept here until a real one runs in the apps
runtime. It also keeps tags (``tag_values``) and raises the occasional alert
(``significantEvent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetcloud.core.errors import FleetError
from fleetcloud.core.types import CHANNEL_EVENTS, Agent, AgentKind, Organisation, Principal, Role
from fleetcloud.jobs import devices as fleet_groups
from fleetcloud.platform import Platform
from fleetcloud.sdk import ui
from fleetcloud.sdk.connection import ConnectionStatus, ConnectionType, ping_payload
from fleetcloud.sdk.ui_manager import UIManager
from fleetcloud.store import admin
from fleetcloud.store import agents as repo
from fleetcloud.store import channels as channel_repo
from fleetcloud.store.channels import AggregateItem, PublishItem

log = logging.getLogger("fleetcloud.demo")

DEMO_ORGANISATION = "Demo Farms"
DEVICES = ("pump-station-1", "weather-mast", "cold-room-3")
GROUPS = {"north-field": ("pump-station-1", "weather-mast"), "cold-chain": ("cold-room-3",)}
OFFLINE_AFTER = timedelta(minutes=1)


@dataclass
class DemoFleet:
    organisation: Organisation
    devices: list[Agent]
    admin_token: str


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


async def simulate(platform: Platform, fleet: DemoFleet, period: float = 2.0) -> None:
    step = 0
    while True:
        now = int(time.time() * 1000)
        items = [
            PublishItem(d.id, "sensors", reading(d, step), d.id, ts=now) for d in fleet.devices
        ]
        items += [PublishItem(d.id, "doover_connection", ping(now), d.id) for d in fleet.devices]
        await platform.store.publish(items)
        step += 1
        await asyncio.sleep(period)


# ---------------------------------------------------------------- demo device UIs


@dataclass
class DemoPanel:
    """One device's UI and the logic behind it, as a processor app would have them."""

    device: Agent
    manager: UIManager
    tags: dict[str, Any] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)
    clear: list[str] = field(default_factory=list)  # pressed actions to reset in ui_cmds
    _active: set[str] = field(default_factory=set)

    @property
    def app_key(self) -> str:
        return self.manager.app_key or ""

    def element(self, name: str) -> Any:
        return self.manager.get_element(name)

    def alert_once(self, key: str, message: str, active: bool) -> None:
        """Raise ``message`` when ``active`` turns true; again only after it cleared."""
        if not active:
            self._active.discard(key)
        elif key not in self._active:
            self._active.add(key)
            self.alerts.append(message)

    def command(self, name: str, value: Any) -> None:
        """A user's input from ``ui_cmds`` (a ``@ui.callback`` in a real app)."""

    def update(self, sensors: Mapping[str, Any]) -> None:
        """New readings arrived."""


class PumpPanel(DemoPanel):
    """A pump filling a tank: start/stop from the console, stops at the target level."""

    def __init__(self, device: Agent) -> None:
        manager = UIManager("pump_controller", "Pump controller")
        manager.add_children(
            ui.NumericVariable(
                "tank_level",
                "Tank level",
                precision=0,
                unit="%",
                min_val=0,
                max_val=100,
                ranges=[
                    ui.Range("low", 0, 20, "red"),
                    ui.Range("ok", 20, 90, "green"),
                    ui.Range("high", 90, 100, "yellow"),
                ],
            ),
            ui.BooleanVariable("pump_running", "Pump running"),
            ui.NumericVariable("flow_rate", "Flow rate", precision=1, unit="L/min"),
            ui.NumericVariable("water_temp", "Water temperature", precision=1, unit="°C"),
            ui.NumericParameter(
                "target_level",
                "Target level",
                min_val=10,
                max_val=95,
                precision=0,
                unit="%",
                default=60,
                help_str="The pump stops when the tank reaches it",
            ),
            ui.Action("toggle_pump", "Start / stop pump", colour="blue"),
            ui.Submodule(
                "diagnostics",
                "Diagnostics",
                [
                    ui.NumericVariable("battery", "Battery", precision=2, unit="V"),
                    ui.NumericVariable("rssi", "Signal", precision=0, unit="dBm"),
                ],
            ),
            ui.AlertStream(),
        )
        super().__init__(device, manager, {"pump_starts": 0, "mode": "manual"})
        self.level, self.running, self.target = 55.0, False, 60.0

    def command(self, name: str, value: Any) -> None:
        if name == "toggle_pump":
            self.set_running(not self.running, "from the console")
            self.clear.append(name)  # a pressed button is cleared, like coerce(None)
        elif name == "target_level" and isinstance(value, int | float):
            self.target = float(value)
        self.tags["last_command"] = name
        self.show()

    def set_running(self, running: bool, why: str) -> None:
        if running != self.running:
            self.running = running
            self.tags["pump_starts"] += running
            self.alerts.append(f"Pump {'started' if running else 'stopped'} {why}")

    def update(self, sensors: Mapping[str, Any]) -> None:
        self.level = min(100.0, max(0.0, self.level + (1.5 if self.running else -0.4)))
        if self.running and self.level >= self.target:
            self.set_running(False, f"at the target level ({self.target:.0f} %)")
        self.alert_once("low", f"Tank level low: {self.level:.0f} %", self.level < 20)
        self.element("water_temp").update(sensors.get("temperature"))
        self.element("battery").update(sensors.get("battery"))
        rssi = sensors.get("rssi")
        self.element("rssi").update(rssi)
        weak = isinstance(rssi, int | float) and rssi < -85
        self.element("diagnostics").update("Signal weak" if weak else "Signal good")
        self.show()

    def show(self) -> None:
        self.element("tank_level").update(self.level)
        self.element("pump_running").update(self.running)
        flow = 12.5 + random.uniform(-0.4, 0.4) if self.running else 0.0
        self.element("flow_rate").update(flow)
        self.tags["tank_level"] = round(self.level)


class ColdRoomPanel(DemoPanel):
    """A cold room: defrost cycles and fan speed from the console, an alarm above 8 °C."""

    def __init__(self, device: Agent) -> None:
        manager = UIManager("cold_room", "Cold room")
        manager.add_children(
            ui.NumericVariable(
                "room_temp",
                "Room temperature",
                precision=1,
                unit="°C",
                ranges=[
                    ui.Range("cold", -30, 5, "green"),
                    ui.Range("warm", 5, 8, "yellow"),
                    ui.Range("too warm", 8, 50, "red"),
                ],
            ),
            ui.NumericVariable("humidity", "Humidity", precision=0, unit="%"),
            ui.TextVariable("mode", "Mode"),
            ui.BooleanParameter("defrost", "Defrost cycle", default=False),
            ui.Slider(
                "fan_speed",
                "Fan speed",
                min_val=0,
                max_val=100,
                step_size=10,
                units="%",
                default=50,
            ),
        )
        super().__init__(device, manager, {"defrost_cycles": 0})
        self.defrosting = False

    def command(self, name: str, value: Any) -> None:
        if name == "defrost" and isinstance(value, bool) and value != self.defrosting:
            self.defrosting = value
            self.tags["defrost_cycles"] += value
        elif name == "fan_speed" and isinstance(value, int | float):
            self.tags["fan_speed"] = value
        self.element("mode").update("Defrosting" if self.defrosting else "Cooling")

    def update(self, sensors: Mapping[str, Any]) -> None:
        temperature = sensors.get("temperature")
        if isinstance(temperature, int | float):
            room = temperature - 16 + (3 if self.defrosting else 0)
            self.element("room_temp").update(room)
            self.alert_once("warm", f"Cold room above 8 °C: {room:.1f} °C", room > 8)
        self.element("humidity").update(sensors.get("humidity"))
        self.element("mode").update("Defrosting" if self.defrosting else "Cooling")


PANELS = {"pump-station-1": PumpPanel, "cold-room-3": ColdRoomPanel}


class DemoPanels:
    """Runs the panels: commands as they arrive on ``ui_cmds``, readings every period."""

    def __init__(self, platform: Platform, fleet: DemoFleet) -> None:
        self.store = platform.store
        self.bus = platform.bus
        self.panels = {d.id: PANELS[d.name](d) for d in fleet.devices if d.name in PANELS}
        self.shown: dict[int, Any] = {}
        self.tagged: dict[int, dict[str, Any]] = {}

    async def run(self, period: float = 2.0) -> None:
        subscription = await self.bus.subscribe([CHANNEL_EVENTS])
        async with subscription:
            await self.catch_up()
            for panel in self.panels.values():
                panel.alerts.append(f"{panel.manager.display_name} started")
            next_tick = 0.0
            while True:
                wait = max(0.0, next_tick - time.monotonic())
                try:
                    for event in await subscription.next_batch(timeout=wait):
                        self.on_event(event.value)
                    if time.monotonic() >= next_tick:
                        next_tick = time.monotonic() + period
                        await self.tick()
                    await self.flush()
                except FleetError as exc:  # keep the demo alive through a store hiccup
                    log.warning("demo device UI: %s", exc.message)

    async def catch_up(self) -> None:
        """Take the parameters users set before a restart from the ``ui_cmds`` aggregate."""
        for agent_id, panel in self.panels.items():
            channel = await self.store.read(channel_repo.get_channel(agent_id, "ui_cmds"))
            cmds = channel.aggregate if channel and isinstance(channel.aggregate, dict) else {}
            for name, element in panel.manager.interactions().items():
                value = cmds.get(f"{panel.app_key}_{name}")
                if value is not None and not isinstance(element, ui.Action):
                    panel.command(name, value)

    def on_event(self, value: Mapping[str, Any]) -> None:
        data = value.get("d") or {}
        channel = data.get("channel") or {}
        if value.get("t") != "MessageCreate" or channel.get("name") != "ui_cmds":
            return
        panel = self.panels.get(int(channel.get("agent_id") or 0))
        message = data.get("data")
        if panel is None or not isinstance(message, dict):
            return
        prefix = f"{panel.app_key}_"
        for key, command in message.items():
            if key.startswith(prefix) and command is not None:
                panel.command(key.removeprefix(prefix), command)

    async def tick(self) -> None:
        keys = [(agent_id, "sensors") for agent_id in self.panels]
        channels = await self.store.read(channel_repo.load_channels(keys))
        for agent_id, panel in self.panels.items():
            channel = channels.get((agent_id, "sensors"))
            sensors = channel.aggregate if channel and isinstance(channel.aggregate, dict) else {}
            panel.update(sensors)

    async def flush(self) -> None:
        """Write what changed: the UI, pressed buttons cleared, tags, alerts."""
        updates: list[AggregateItem] = []
        messages: list[PublishItem] = []
        for agent_id, panel in self.panels.items():
            key = panel.app_key
            rendered = panel.manager.render()
            if rendered != self.shown.get(agent_id):
                body = {"state": {"children": {key: rendered}}}
                updates.append(
                    AggregateItem(agent_id, "ui_state", body, "merge", f"state.children.{key}")
                )
                self.shown[agent_id] = rendered
            if panel.clear:
                patch = {f"{key}_{name}": None for name in panel.clear}
                updates.append(AggregateItem(agent_id, "ui_cmds", patch))
                panel.clear = []
            if panel.tags != self.tagged.get(agent_id):
                messages.append(PublishItem(agent_id, "tag_values", {key: panel.tags}, agent_id))
                self.tagged[agent_id] = dict(panel.tags)
            for alert in panel.alerts:
                data = {"message": alert, "app_key": key}
                messages.append(PublishItem(agent_id, "significantEvent", data, agent_id))
            panel.alerts = []
        if updates:
            await self.store.write(channel_repo.update_aggregates(updates))
        if messages:
            await self.store.publish(messages)


async def run(platform: Platform, fleet: DemoFleet) -> None:
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(simulate(platform, fleet), name="demo-simulator")
            tasks.create_task(DemoPanels(platform, fleet).run(), name="demo-device-ui")
    except* Exception:  # the server goes on without its demo; say why
        log.exception("the demo stopped")


@contextlib.asynccontextmanager
async def running(platform: Platform, url: str) -> AsyncIterator[DemoFleet]:
    fleet = await prepare(platform)
    print(
        f"\nfleetcloud demo is running at {url}\n"
        f"  organisation: {fleet.organisation.name} ({fleet.organisation.id})\n"
        f"  admin token:  {fleet.admin_token}\n"
        f"  devices:      {', '.join(f'{d.name} ({d.id})' for d in fleet.devices)}\n"
        f"  web console:  {url}/ (sign in with the token above)\n"
        f"  try: curl -H 'Authorization: Bearer {fleet.admin_token}' "
        f"{url}/api/agents/{fleet.devices[0].id}/channels/sensors/aggregate\n",
        flush=True,
    )
    task = asyncio.create_task(run(platform, fleet), name="demo")
    try:
        yield fleet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
