"""A pump filling a tank: started and stopped from the console, it stops by itself at
the target level, and says so in the device's alerts.

The tank is simulated: each reading on ``sensors`` moves the level (up while the pump
runs, slowly down while it does not). Level, pump state and counters are tags.
"""

from __future__ import annotations

import random
from typing import Any

from fleetcloud.sdk import ui
from fleetcloud.sdk.processor import Application, DeploymentEvent, MessageCreateEvent, run_app

from .config import DemoFarmConfig, invoked_by_command

FILL_PER_READING = 1.5
DRAIN_PER_READING = 0.4
LOW_LEVEL = 20.0


class PumpUI:
    def __init__(self) -> None:
        self.tank_level = ui.NumericVariable(
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
        )
        self.pump_running = ui.BooleanVariable("pump_running", "Pump running")
        self.flow_rate = ui.NumericVariable("flow_rate", "Flow rate", precision=1, unit="L/min")
        self.water_temp = ui.NumericVariable(
            "water_temp", "Water temperature", precision=1, unit="°C"
        )
        self.target_level = ui.NumericParameter(
            "target_level",
            "Target level",
            min_val=10,
            max_val=95,
            precision=0,
            unit="%",
            default=60,
            help_str="The pump stops when the tank reaches it",
        )
        self.toggle_pump = ui.Action("toggle_pump", "Start / stop pump", colour="blue")
        self.battery = ui.NumericVariable("battery", "Battery", precision=2, unit="V")
        self.rssi = ui.NumericVariable("rssi", "Signal", precision=0, unit="dBm")
        self.diagnostics = ui.Submodule("diagnostics", "Diagnostics", [self.battery, self.rssi])
        self.alerts = ui.AlertStream()

    def elements(self) -> tuple[Any, ...]:
        return (
            self.tank_level,
            self.pump_running,
            self.flow_rate,
            self.water_temp,
            self.target_level,
            self.toggle_pump,
            self.diagnostics,
            self.alerts,
        )


class PumpController(Application):
    config: DemoFarmConfig
    command_message = False  # set by ``handler``: invoked by a message on ui_cmds

    async def setup(self) -> None:
        self.ui = PumpUI()
        self.ui_manager.add_children(*self.ui.elements())
        self.level = float(await self.get_tag("level", 55.0))
        self.running = bool(await self.get_tag("pump_running", False))

    @property
    def target(self) -> float:
        value = self.ui.target_level.current_value
        return float(value) if isinstance(value, int | float) else 60.0

    @ui.callback("toggle_pump")
    async def on_toggle(self, value: Any) -> None:
        if not self.command_message:
            return  # the press's own message toggles (see ``invoked_by_command``)
        await self.set_running(not self.running, "from the console")
        self.ui.toggle_pump.coerce(None)  # a pressed button is cleared
        await self.set_tag("last_command", "toggle_pump")

    @ui.callback("target_level")
    async def on_target(self, value: Any) -> None:
        await self.set_tag("last_command", "target_level")

    async def set_running(self, running: bool, why: str) -> None:
        if running == self.running:
            return
        self.running = running
        if running:
            await self.set_tag("pump_starts", await self.get_tag("pump_starts", 0) + 1)
        await self.ui.alerts.send_alert(f"Pump {'started' if running else 'stopped'} {why}")

    async def on_deployment(self, event: DeploymentEvent) -> None:
        await self.set_tag("mode", "manual")
        await self.set_tag("pump_starts", await self.get_tag("pump_starts", 0))
        await self.ui.alerts.send_alert("Pump controller started")
        await self.show()

    async def on_message_create(self, event: MessageCreateEvent) -> None:
        if event.channel_name == "sensors" and isinstance(event.message.data, dict):
            await self.reading(event.message.data)
        await self.show()

    async def reading(self, sensors: dict[str, Any]) -> None:
        step = FILL_PER_READING if self.running else -DRAIN_PER_READING
        self.level = min(100.0, max(0.0, self.level + step))
        if self.running and self.level >= self.target:
            await self.set_running(False, f"at the target level ({self.target:.0f} %)")
        low = self.level < LOW_LEVEL
        if low and not await self.get_tag("low_alerted", False):
            await self.ui.alerts.send_alert(f"Tank level low: {self.level:.0f} %")
        await self.set_tag("low_alerted", low)
        self.ui.water_temp.update(sensors.get("temperature"))
        self.ui.battery.update(sensors.get("battery"))
        rssi = sensors.get("rssi")
        self.ui.rssi.update(rssi)
        weak = isinstance(rssi, int | float) and rssi < -85
        self.ui.diagnostics.update("Signal weak" if weak else "Signal good")

    async def show(self) -> None:
        self.ui.tank_level.update(self.level)
        self.ui.pump_running.update(self.running)
        flow = 12.5 + random.uniform(-0.4, 0.4) if self.running else 0.0
        self.ui.flow_rate.update(flow)
        await self.set_tag("level", round(self.level, 1))
        await self.set_tag("pump_running", self.running)
        await self.set_tag("tank_level", round(self.level))


def handler(event: dict[str, Any], context: Any) -> None:
    """Entry point: the fleetcloud runtime calls this once per event."""
    DemoFarmConfig.clear_elements()
    app = PumpController(config=DemoFarmConfig())
    app.command_message = invoked_by_command(event)
    run_app(app, event, context)
