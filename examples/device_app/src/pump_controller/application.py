"""The Pump Controller: keeps a tank between two levels, and lets an operator take over.

Every loop it reads the tank, runs the pump (automatically between the configured start
and stop levels, or as the operator said), raises an alert when the tank is too full,
publishes a reading and keeps its state in tags, so a restart carries on where it was.
"""

import json
import logging
from typing import Any

from fleetcloud.sdk import ui
from fleetcloud.sdk.device import Application

from .app_config import PumpConfig
from .app_ui import PumpUI
from .tank import Tank

log = logging.getLogger(__name__)

AUTO = "auto"
MANUAL = "manual"
REARM_MARGIN = 5.0  # % below the high alarm before it can fire again


class PumpController(Application):
    config: PumpConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ui = PumpUI()
        self.tank = Tank()
        self.pump_on = False
        self.mode = AUTO
        self.readings = 0
        self.alarm_active = False

    async def setup(self) -> None:
        self.loop_target_period = self.config.loop_period.value
        self.ui_manager.set_display_name("Pump Controller")
        self.ui_manager.add_children(*self.ui.fetch())
        # State kept in tags survives a restart of the app (or of the whole device).
        self.tank.level = self.get_tag("level", default=self.tank.level)
        self.pump_on = self.get_tag("pump_on", default=False)
        self.mode = self.get_tag("mode", default=AUTO)
        self.readings = self.get_tag("readings", default=0)
        self.alarm_active = self.get_tag("alarm_active", default=False)
        log.info("Pump Controller started: level %.1f %%, %s mode", self.tank.level, self.mode)

    async def main_loop(self) -> None:
        self.loop_target_period = self.config.loop_period.value  # a config change applies now
        outflow = self.config.pump_rate.value if self.pump_on else 0.0
        level = round(self.tank.advance(self.config.inflow_rate.value, outflow), 2)
        if self.mode == AUTO:
            self.pump_on = self.automatic(level)
        await self.check_alarm(level)
        await self.publish(
            self.config.readings_channel.value,
            {"seq": self.readings, "level": level, "pump_on": self.pump_on, "mode": self.mode},
        )
        self.readings += 1
        await self.set_tag("level", level)
        await self.set_tag("pump_on", self.pump_on)
        await self.set_tag("mode", self.mode)
        await self.set_tag("readings", self.readings)
        self.ui.update(level, self.pump_on, self.mode)

    # ------------------------------------------------------------ control

    def start_level(self) -> float:
        """The operator's start level if one was set in the console, else the config's."""
        chosen = self.ui.start_level.current_value
        return float(chosen) if chosen is not None else float(self.config.start_level.value)

    def automatic(self, level: float) -> bool:
        if level >= self.start_level():
            return True
        if level <= self.config.stop_level.value:
            return False
        return self.pump_on

    async def check_alarm(self, level: float) -> None:
        high = self.config.high_alarm.value
        if level >= high and not self.alarm_active:
            self.alarm_active = True
            message = f"High tank level: {level:.1f} % (alarm at {high:.1f} %)"
            await self.ui.alerts.send_alert(message, level=level)
            # Also kept in a channel of its own, for the alert history.
            await self.device_agent.publish_to_channel_async(
                "alerts", json.dumps({"alert": "high_level", "message": message, "level": level})
            )
            log.warning(message)
        elif level < high - REARM_MARGIN and self.alarm_active:
            self.alarm_active = False
        await self.set_tag("alarm_active", self.alarm_active)

    # ------------------------------------------------------------ the operator

    @ui.callback("start")
    async def on_start(self, new_value: Any) -> None:
        self.mode, self.pump_on = MANUAL, True
        self.ui.start.coerce(None)  # the button is pressed again next time
        log.info("Operator started the pump")

    @ui.callback("stop")
    async def on_stop(self, new_value: Any) -> None:
        self.mode, self.pump_on = MANUAL, False
        self.ui.stop.coerce(None)
        log.info("Operator stopped the pump")

    @ui.callback("auto")
    async def on_auto(self, new_value: Any) -> None:
        self.mode = AUTO
        self.ui.auto.coerce(None)
        log.info("Operator returned the pump to automatic mode")

    @ui.callback("start_level")
    async def on_start_level(self, new_value: Any) -> None:
        log.info("Operator set the start level to %s %%", new_value)
