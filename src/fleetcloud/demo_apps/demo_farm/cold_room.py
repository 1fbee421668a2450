"""A cold room: defrost cycles and fan speed set from the console, and an alert when the
room gets warmer than 8 °C (once, until it has cooled down again).

The room's temperature follows the device's ``sensors`` readings, 16 °C lower, and 3 °C
warmer while it defrosts. Counters and the alert's state are tags.
"""

from __future__ import annotations

from typing import Any

from fleetcloud.sdk import ui
from fleetcloud.sdk.processor import Application, DeploymentEvent, MessageCreateEvent, run_app

from .config import DemoFarmConfig

WARM = 8.0
OFFSET = -16.0
DEFROST_WARMING = 3.0


class ColdRoomUI:
    def __init__(self) -> None:
        self.room_temp = ui.NumericVariable(
            "room_temp",
            "Room temperature",
            precision=1,
            unit="°C",
            ranges=[
                ui.Range("cold", -30, 5, "green"),
                ui.Range("warm", 5, 8, "yellow"),
                ui.Range("too warm", 8, 50, "red"),
            ],
        )
        self.humidity = ui.NumericVariable("humidity", "Humidity", precision=0, unit="%")
        self.mode = ui.TextVariable("mode", "Mode")
        self.defrost = ui.BooleanParameter("defrost", "Defrost cycle", default=False)
        self.fan_speed = ui.Slider(
            "fan_speed", "Fan speed", min_val=0, max_val=100, step_size=10, units="%", default=50
        )
        self.alerts = ui.AlertStream()

    def elements(self) -> tuple[Any, ...]:
        return (
            self.room_temp,
            self.humidity,
            self.mode,
            self.defrost,
            self.fan_speed,
            self.alerts,
        )


class ColdRoom(Application):
    config: DemoFarmConfig

    async def setup(self) -> None:
        self.ui = ColdRoomUI()
        self.ui_manager.add_children(*self.ui.elements())

    @property
    def defrosting(self) -> bool:
        return self.ui.defrost.current_value is True

    @ui.callback("defrost")
    async def on_defrost(self, value: Any) -> None:
        if value is True and not await self.get_tag("defrosting", False):
            await self.set_tag("defrost_cycles", await self.get_tag("defrost_cycles", 0) + 1)
        await self.set_tag("defrosting", value is True)

    @ui.callback("fan_speed")
    async def on_fan_speed(self, value: Any) -> None:
        if isinstance(value, int | float):
            await self.set_tag("fan_speed", value)

    async def on_deployment(self, event: DeploymentEvent) -> None:
        await self.set_tag("defrost_cycles", await self.get_tag("defrost_cycles", 0))
        await self.ui.alerts.send_alert("Cold room controller started")
        self.show()

    async def on_message_create(self, event: MessageCreateEvent) -> None:
        if event.channel_name == "sensors" and isinstance(event.message.data, dict):
            await self.reading(event.message.data)
        self.show()

    async def reading(self, sensors: dict[str, Any]) -> None:
        temperature = sensors.get("temperature")
        if isinstance(temperature, int | float):
            room = temperature + OFFSET + (DEFROST_WARMING if self.defrosting else 0.0)
            self.ui.room_temp.update(room)
            warm = room > WARM
            if warm and not await self.get_tag("warm_alerted", False):
                await self.ui.alerts.send_alert(f"Cold room above {WARM:.0f} °C: {room:.1f} °C")
            await self.set_tag("warm_alerted", warm)
        self.ui.humidity.update(sensors.get("humidity"))

    def show(self) -> None:
        self.ui.mode.update("Defrosting" if self.defrosting else "Cooling")


def handler(event: dict[str, Any], context: Any) -> None:
    """Entry point: the fleetcloud runtime calls this once per event."""
    DemoFarmConfig.clear_elements()
    run_app(ColdRoom(config=DemoFarmConfig()), event, context)
