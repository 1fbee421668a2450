"""The UI: the layout components render to, pushes only on change, callbacks and coerce."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fleetcloud.sdk import ui
from fleetcloud.sdk.errors import AppError
from fleetcloud.sdk.processor import Application
from fleetcloud.sdk.testing import AppHarness


class Panel(Application):
    """Shows two readings; a message updates only the ones it carries."""

    async def setup(self) -> None:
        self.level = ui.NumericVariable("level", "Level", precision=2, units="m", min_val=0)
        self.flow = ui.NumericVariable("flow", "Flow", ranges=[ui.Range("High", 10, 20, "red")])
        self.pumps = ui.Submodule(
            "pumps",
            "Pumps",
            [
                ui.BooleanVariable("pump_on", "Pump On"),
                ui.Slider("speed", "Speed", min_val=0, max_val=3000, step_size=50, units="rpm"),
                ui.TextParameter("note", "Note", is_text_area=True),
                ui.BooleanParameter("auto", "Automatic", default=True),
                ui.DateTimeVariable("since", "Running Since"),
            ],
            status="idle",
        )
        self.ui_manager.add_children(self.level, self.flow, self.pumps)
        self.ui_manager.set_variant(ui.ApplicationVariant.submodule)

    async def on_message_create(self, event: Any) -> None:
        data = event.message.data
        if "level" in data:
            self.level.update(data["level"])
        if "flow" in data:
            self.flow.update(data["flow"])
        if "since" in data:
            since = datetime.fromtimestamp(data["since"], UTC)
            self.pumps.children[4].update(since)  # type: ignore[attr-defined]
            self.pumps.update("running")


def test_the_documented_layout_of_every_component() -> None:
    harness = AppHarness(Panel, app_key="panel", display_name="Tank Panel")
    summary = harness.invoke(harness.message_create("sensors", {"level": 1.23456, "since": 1.5e9}))
    assert summary["ui_pushed"] is True
    state = harness.ui_state
    assert state is not None
    assert {k: state[k] for k in ("type", "name", "displayString", "variant")} == {
        "type": "uiApplication",
        "name": "panel",
        "displayString": "Tank Panel",
        "variant": "submodule",
    }
    assert state["children"]["level"] == {
        "type": "uiVariable",
        "name": "level",
        "displayString": "Level",
        "position": 0,
        "varType": "float",
        "currentValue": 1.23,
        "decPrecision": 2,
        "units": "m",
        "min": 0,
    }
    assert state["children"]["flow"]["ranges"] == [
        {"label": "High", "min": 10, "max": 20, "colour": "red"}
    ]
    assert "currentValue" not in state["children"]["flow"]
    pumps = state["children"]["pumps"]
    assert pumps["type"] == "uiSubmodule"
    assert pumps["statusString"] == "running"
    assert pumps["defaultOpen"] is True
    children = pumps["children"]
    assert [children[n]["position"] for n in children] == [0, 1, 2, 3, 4]
    assert children["speed"] == {
        "type": "uiSlider",
        "name": "speed",
        "displayString": "Speed",
        "position": 1,
        "cmdKey": "panel_speed",
        "requiresConfirm": False,
        "min": 0,
        "max": 3000,
        "stepSize": 50,
        "units": "rpm",
    }
    assert children["note"]["type"] == "uiTextParam"
    assert children["note"]["isTextArea"] is True
    assert children["auto"]["type"] == "uiBoolParam"
    assert children["auto"]["default"] is True
    assert children["since"] == {
        "type": "uiVariable",
        "name": "since",
        "displayString": "Running Since",
        "position": 4,
        "varType": "time",
        "currentValue": 1_500_000_000_000,
    }
    assert children["pump_on"]["varType"] == "bool"


def test_the_push_replaces_only_this_apps_subtree_and_only_on_change() -> None:
    harness = AppHarness(Panel, app_key="panel")
    harness.api.put_message(
        harness.agent_id, "ui_state", {"state": {"children": {"other": {"x": 1}}}}, 1
    )
    harness.invoke(harness.message_create("sensors", {"level": 2.0, "flow": 12}))
    [push] = harness.writes("ui_state")
    assert push.method == "update_aggregate"
    assert push.replace == "state.children.panel"
    assert set(push.data["state"]["children"]) == {"panel"}
    assert harness.aggregate("ui_state")["state"]["children"]["other"] == {"x": 1}

    # only the level changes: the flow shown last time stays, and one push is made
    harness.invoke(harness.message_create("sensors", {"level": 2.5}))
    assert len(harness.writes("ui_state", harness.last_calls)) == 1
    assert harness.ui_element("flow")["currentValue"] == 12
    assert harness.ui_element("level")["currentValue"] == 2.5
    assert harness.ui_element("pumps")["statusString"] == "idle"

    # nothing new to show: nothing is written
    harness.invoke(harness.message_create("sensors", {"level": 2.5}))
    assert harness.writes("ui_state", harness.last_calls) == []
    assert harness.summaries[-1]["ui_pushed"] is False


class NoUI(Application):
    async def on_schedule(self, event: Any) -> None:
        await self.ui_manager.push_async()


def test_an_app_without_ui_writes_no_ui_state() -> None:
    harness = AppHarness(NoUI)
    harness.invoke(harness.schedule())
    assert harness.api.calls == []
    assert harness.ui_state is None


class Controls(Application):
    received: list[tuple[str, Any]] = []  # noqa: RUF012 - shared with the test on purpose

    async def setup(self) -> None:
        self.setpoint = ui.NumericParameter("setpoint", "Setpoint", min_val=5, max_val=30)
        self.reset = ui.Action("reset", "Reset", colour="red", requires_confirm=False)
        self.mode = ui.TextParameter("mode", "Mode", default="auto")
        self.ui_manager.add_children(self.setpoint, self.reset, self.mode)

    @ui.callback("setpoint")
    def on_setpoint(self, value: Any) -> None:  # a plain function works too
        self.received.append(("setpoint", value))

    @ui.callback("reset")
    async def on_reset(self, value: Any) -> None:
        self.received.append(("reset", value))
        self.reset.coerce(None)
        self.setpoint.coerce(20)

    async def on_schedule(self, event: Any) -> None:
        await self.set_tag("setpoint_seen", self.setpoint.current_value)
        await self.set_tag("mode_seen", self.mode.value)


@pytest.fixture
def controls() -> AppHarness:
    Controls.received = []
    return AppHarness(Controls, app_key="ctl")


def test_interactions_render_their_cmd_keys(controls: AppHarness) -> None:
    controls.invoke(controls.schedule())
    assert controls.ui_element("reset") == {
        "type": "uiAction",
        "name": "reset",
        "displayString": "Reset",
        "position": 1,
        "cmdKey": "ctl_reset",
        "requiresConfirm": False,
        "colour": "red",
    }
    assert controls.ui_element("setpoint")["min"] == 5
    assert controls.ui_element("mode")["default"] == "auto"


def test_callbacks_get_the_value_and_the_handler_sees_it(controls: AppHarness) -> None:
    controls.invoke(controls.ui_command("setpoint", 21.5))
    assert Controls.received == [("setpoint", 21.5)]
    controls.invoke(controls.schedule())
    assert Controls.received == [("setpoint", 21.5)]  # handled once, not again
    assert controls.tags["setpoint_seen"] == 21.5
    assert controls.tags["mode_seen"] == "auto"  # the default until a user sets it


def test_a_redelivered_command_is_not_handled_twice(controls: AppHarness) -> None:
    event = controls.ui_command("setpoint", 7)
    controls.invoke(event)
    controls.invoke(event)
    assert Controls.received == [("setpoint", 7)]


def test_another_apps_commands_are_not_delivered(controls: AppHarness) -> None:
    controls.invoke(controls.ui_command("setpoint", 9, app_key="other"))
    assert Controls.received == []


def test_coerce_writes_only_this_apps_ui_cmds(controls: AppHarness) -> None:
    controls.api.put_message(controls.agent_id, "ui_cmds", {"other_x": 1}, controls.user_id)
    controls.invoke(controls.ui_command("reset", True))
    assert Controls.received == [("reset", True)]
    [write] = controls.writes("ui_cmds")
    assert write.data == {"ctl_reset": None, "ctl_setpoint": 20}
    assert controls.ui_cmds == {"other_x": 1, "ctl_setpoint": 20}
    controls.invoke(controls.schedule())  # the coerced value is not taken for a new command
    assert Controls.received == [("reset", True)]
    assert controls.tags["setpoint_seen"] == 20


def test_component_names_are_unique_and_valid() -> None:
    manager = ui.UIManager("app")
    manager.add_children(ui.Submodule("group", "Group", [ui.TextVariable("a", "A")]))
    with pytest.raises(ValueError, match="two UI components are named 'a'"):
        manager.add_children(ui.NumericVariable("a", "A again"))
    with pytest.raises(ValueError, match="letters, digits"):
        ui.TextVariable("has space", "Bad")


async def test_send_alert_outside_an_invocation_explains_itself() -> None:
    stream = ui.AlertStream()
    with pytest.raises(AppError, match="not in the app's ui_manager"):
        await stream.send_alert("hello")
