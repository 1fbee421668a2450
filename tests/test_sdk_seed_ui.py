"""The tag, UI and alert samples of seed 001 that apply to processors, with only the
import changed (``from pydoover import ui`` → ``from fleetcloud.sdk import ui``).

Seed 001 writes them as device apps (``main_loop``, a synchronous ``get_tag``); a
processor runs the same code in a handler, and awaits ``get_tag`` as seed 000 does.
"""

# The seed's request/response sample is kept verbatim (an if/else, not a ternary).
# ruff: noqa: SIM108

from __future__ import annotations

import json
from datetime import datetime

from fleetcloud.sdk import config, ui
from fleetcloud.sdk.processor import Application
from fleetcloud.sdk.testing import AppHarness

# ---------------------------------------------------------------- UI components and callbacks


class MyUI:
    def __init__(self):
        # Display values (published to ui_state)
        self.temperature = ui.NumericVariable("temp", "Temperature", precision=1, unit="°C")
        self.is_running = ui.BooleanVariable("running", "Running")

        # User inputs (generate ui_cmds when changed)
        self.setpoint = ui.NumericParameter("setpoint", "Setpoint")
        self.start_btn = ui.Action("start", "Start")

    def fetch(self):
        return (self.temperature, self.is_running, self.setpoint, self.start_btn)

    def update(self, temp, running):
        self.temperature.update(temp)
        self.is_running.update(running)


class MyApplication(Application):
    async def setup(self):
        self.ui = MyUI()
        self.ui_manager.add_children(*self.ui.fetch())

    @ui.callback("start")
    async def on_start(self, new_value):
        """Called when user clicks start button."""
        await self.start_process()
        self.ui.start_btn.coerce(None)  # Clear button state

    @ui.callback("setpoint")
    async def on_setpoint_change(self, new_value):
        """Called when user changes setpoint."""
        self.target_temp = new_value
        await self.set_tag("target_temp", self.target_temp)

    async def start_process(self):
        await self.set_tag("starts", await self.get_tag("starts", 0) + 1)

    async def on_message_create(self, event):
        if event.channel_name == "sensors":
            self.ui.update(event.message.data["temp"], True)


def ui_harness() -> AppHarness:
    return AppHarness(MyApplication, app_key="pump")


def test_ui_components_render_the_documented_layout() -> None:
    harness = ui_harness()
    harness.invoke(harness.message_create("sensors", {"temp": 21.46}))
    state = harness.ui_state
    assert state is not None
    assert state["type"] == "uiApplication"
    assert state["name"] == "pump"
    assert state["children"]["temp"] == {
        "type": "uiVariable",
        "name": "temp",
        "displayString": "Temperature",
        "position": 0,
        "varType": "float",
        "currentValue": 21.5,
        "decPrecision": 1,
        "units": "°C",
    }
    assert state["children"]["running"]["currentValue"] is True
    assert state["children"]["setpoint"] == {
        "type": "uiFloatParam",
        "name": "setpoint",
        "displayString": "Setpoint",
        "position": 2,
        "cmdKey": "pump_setpoint",
        "requiresConfirm": False,
    }
    assert state["children"]["start"]["type"] == "uiAction"
    assert state["children"]["start"]["requiresConfirm"] is True


def test_callbacks_receive_ui_cmds_values() -> None:
    harness = ui_harness()
    harness.invoke(harness.ui_command("setpoint", 42.5))
    assert harness.tags["target_temp"] == 42.5
    harness.invoke(harness.ui_command("start", True))
    assert harness.tags["starts"] == 1
    assert "pump_start" not in harness.ui_cmds  # coerce(None) cleared the button
    harness.invoke(harness.ui_command("start", True))  # pressed again: a new command
    assert harness.tags["starts"] == 2


def test_a_new_ui_cmds_value_is_delivered_by_any_invocation_once() -> None:
    harness = ui_harness()
    # the user changed the setpoint while the app was not subscribed to ui_cmds
    harness.api.put_message(harness.agent_id, "ui_cmds", {"pump_setpoint": 18}, harness.user_id)
    harness.invoke(harness.schedule())
    assert harness.tags["target_temp"] == 18
    harness.invoke(harness.schedule())
    assert len(harness.writes("tag_values", harness.last_calls)) == 0  # nothing new to handle


# ---------------------------------------------------------------- alerts


class AlertUI:
    def __init__(self):
        self.notifications = ui.AlertStream()

    def fetch(self):
        return (self.notifications,)


class AlertApplication(Application):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.active_alerts = set()

    async def setup(self):
        self.ui = AlertUI()
        self.ui_manager.add_children(*self.ui.fetch())

    async def send_alert(self, message: str):
        """Send alert through UI system."""
        await self.ui.notifications.send_alert(message)

        # Also log to a channel for history
        await self.device_agent.publish_to_channel_async(
            "alerts", json.dumps({"message": message, "timestamp": datetime.now().isoformat()})
        )

    async def send_alert_once(self, alert_id: str, message: str):
        """Send alert only once until cleared."""
        if alert_id in self.active_alerts:
            return False

        await self.ui.notifications.send_alert(message)
        self.active_alerts.add(alert_id)
        return True

    def clear_alert(self, alert_id: str):
        self.active_alerts.discard(alert_id)

    async def on_message_create(self, event):
        self.temperature = event.message.data["temperature"]
        if self.temperature > 35:
            await self.send_alert_once("high_temp", f"High temp: {self.temperature}°C")
            await self.send_alert_once("high_temp", f"High temp: {self.temperature}°C")
        else:
            self.clear_alert("high_temp")
        if self.temperature > 50:
            await self.send_alert("Overheating")


def test_alerts_go_to_significant_event_once() -> None:
    harness = AppHarness(AlertApplication, app_key="guard")
    harness.invoke(harness.message_create("sensors", {"temperature": 36}))
    assert harness.alerts == [{"message": "High temp: 36°C", "app_key": "guard"}]
    assert harness.ui_element("significantEvent")["type"] == "uiAlertStream"
    harness.invoke(harness.message_create("sensors", {"temperature": 55}))
    assert [alert["message"] for alert in harness.alerts][-2:] == ["High temp: 55°C", "Overheating"]
    [logged] = harness.published("alerts")
    assert logged["message"] == "Overheating"  # the JSON text arrived as an object


# ---------------------------------------------------------------- tags


class TagPatterns(Application):
    async def on_schedule(self, event):
        # Simple values
        await self.set_tag("temperature", 25.5)
        await self.set_tag("is_running", True)
        await self.set_tag("status", "operational")

        # Structured data
        await self.set_tag(
            "sensor_data",
            {
                "temperature": 25.5,
                "humidity": 60.0,
                "pressure": 1013.25,
                "timestamp": datetime.now().isoformat(),
            },
        )

        # Lists
        await self.set_tag("recent_values", [25.5, 26.0, 25.8])

        # Use descriptive, hierarchical names
        await self.set_tag("sensor.temperature.indoor", 25.5)

    async def on_manual_invoke(self, event):
        # With default value
        temp = await self.get_tag("temperature", default=0.0)
        enabled = await self.get_tag("feature_enabled", default=True)

        # Without default (returns None if not set)
        status = await self.get_tag("status")
        if status is None:
            status = "unknown"
        await self.set_tag("seen", [temp, enabled, status])

    async def on_message_create(self, event):
        # Check for pending requests
        request = await self.get_tag("pending_request")

        if request:
            request_type = request.get("type")
            request_id = request.get("id")

            # Process
            if request_type == "reset":
                result = "success"
            else:
                result = "unknown_request"

            # Clear request, set response
            await self.set_tag("pending_request", None)
            await self.set_tag("last_response", {"request_id": request_id, "result": result})


def test_tag_patterns() -> None:
    harness = AppHarness(TagPatterns, app_key="tagger")
    harness.invoke(harness.manual_invoke())
    assert harness.tags == {"seen": [0.0, True, "unknown"]}
    harness.invoke(harness.schedule())
    assert len(harness.writes("tag_values", harness.last_calls)) == 1  # one flush
    assert harness.tags["sensor.temperature.indoor"] == 25.5
    assert harness.tags["recent_values"] == [25.5, 26.0, 25.8]
    harness.invoke(harness.manual_invoke())
    assert harness.tags["seen"] == [25.5, True, "operational"]


def test_request_response_clears_the_request() -> None:
    harness = AppHarness(
        TagPatterns, app_key="tagger", tags={"pending_request": {"type": "reset", "id": 7}}
    )
    harness.invoke(harness.message_create("poke", {}))
    assert "pending_request" not in harness.tags
    assert harness.tags["last_response"] == {"request_id": 7, "result": "success"}


class CoordinatorConfig(config.Schema):
    def __init__(self):
        self.simulator_app_key = config.Application("Simulator App Key")
        self.worker_apps = config.Array("Worker Apps", element=config.Application("Worker App"))


class CoordinatorApplication(Application):
    async def on_schedule(self, event):
        # Get another agent's app key from config
        sim_key = self.config.simulator_app_key.value

        # Read tags from that agent's tag_values channel
        sensor_value = await self.get_tag("sensor_reading", app_key=sim_key)
        if sensor_value is not None:
            await self.set_tag("sensor_copy", sensor_value)

        # Collect status from worker agents via their tag_values channels
        worker_keys = [w.value for w in self.config.worker_apps.elements]

        statuses = {}
        for key in worker_keys:
            status = await self.get_tag("status", app_key=key)
            statuses[key] = status or "unknown"

        # Aggregate and publish our own status
        all_running = all(s == "running" for s in statuses.values())
        await self.set_tag("worker_statuses", statuses)
        await self.set_tag("all_workers_running", all_running)


def test_reading_other_apps_tags() -> None:
    harness = AppHarness(
        lambda: CoordinatorApplication(config=CoordinatorConfig()),
        app_key="coordinator",
        deployment_config={"simulator_app_key": "sim", "worker_apps": ["w1", "w2"]},
    )
    others = {"sim": {"sensor_reading": 3.5}, "w1": {"status": "running"}, "w2": {"x": 1}}
    harness.api.put_message(harness.agent_id, "tag_values", others, harness.agent_id)
    harness.invoke(harness.schedule())
    assert harness.tags == {
        "sensor_copy": 3.5,
        "worker_statuses": {"w1": "running", "w2": "unknown"},
        "all_workers_running": False,
    }
    assert harness.tag_values["w1"] == {"status": "running"}  # others' tags untouched
