"""The Pump Controller's unit tests: its loop stepped by the SDK's harness, no agent."""

from collections.abc import Iterator
from typing import Any

import pytest
from pump_controller import PumpConfig, PumpController

from fleetcloud.sdk.device.testing import DeviceHarness

APP_KEY = "pump"


def make_harness(**config: Any) -> DeviceHarness:
    return DeviceHarness(
        PumpController(config=PumpConfig()), app_key=APP_KEY, deployment_config=config
    )


@pytest.fixture
def harness() -> Iterator[DeviceHarness]:
    with make_harness(inflow_rate=10, pump_rate=25) as made:
        yield made


def levels(harness: DeviceHarness) -> list[float]:
    return [reading["level"] for reading in harness.published("sensors/tank")]


def test_every_loop_publishes_a_numbered_reading_and_keeps_state_in_tags(
    harness: DeviceHarness,
) -> None:
    harness.step(3)
    readings = harness.published("sensors/tank")
    assert [r["seq"] for r in readings] == [0, 1, 2]
    assert levels(harness) == [60.0, 70.0, 80.0]
    assert harness.tags["readings"] == 3
    assert harness.tags["level"] == 80.0
    assert harness.ui_element("level")["currentValue"] == 80.0
    assert harness.ui_state["displayString"] == "Pump Controller"


def test_automatic_mode_keeps_the_tank_between_the_levels(harness: DeviceHarness) -> None:
    harness.step(8)
    assert levels(harness) == [60.0, 70.0, 80.0, 65.0, 50.0, 35.0, 20.0, 30.0]
    pumping = [r["pump_on"] for r in harness.published("sensors/tank")]
    assert pumping == [False, False, True, True, True, True, False, False]
    assert harness.ui_element("pump_on")["currentValue"] is False


def test_the_operator_takes_over_and_hands_back(harness: DeviceHarness) -> None:
    harness.step()
    harness.ui_command("start", True)
    harness.step()
    assert harness.tags["mode"] == "manual"
    assert harness.tags["pump_on"] is True
    assert f"{APP_KEY}_start" not in harness.ui_cmds, "the button is released"
    harness.step(4)  # manual: the pump keeps running whatever the level
    assert levels(harness)[-1] == 0.0
    harness.ui_command("auto", True)
    harness.step()
    assert harness.tags["mode"] == "auto"
    assert harness.tags["pump_on"] is False


def test_a_button_pressed_twice_acts_twice(harness: DeviceHarness) -> None:
    for _ in range(2):
        harness.ui_command("stop", True)
        harness.step()
        assert harness.tags["pump_on"] is False
        harness.ui_command("start", True)
        harness.step()
        assert harness.tags["pump_on"] is True


def test_the_operator_can_move_the_start_level(harness: DeviceHarness) -> None:
    harness.ui_command("start_level", 55)
    harness.step()
    assert harness.published("sensors/tank")[-1] == {
        "seq": 0,
        "level": 60.0,
        "pump_on": True,
        "mode": "auto",
    }


def test_a_high_level_raises_one_alert_until_it_falls_back() -> None:
    with make_harness(inflow_rate=5, pump_rate=0, high_alarm=90) as harness:
        harness.step()
        harness.app.tank.level = 88.0
        harness.step(3)  # 93, 98, 100
        assert len(harness.alerts) == 1
        assert harness.alerts[0]["message"] == "High tank level: 93.0 % (alarm at 90.0 %)"
        assert harness.alerts[0]["app_key"] == APP_KEY
        assert harness.published("alerts")[0]["alert"] == "high_level"
        harness.app.tank.level = 50.0
        harness.step()
        harness.app.tank.level = 95.0
        harness.step()
        assert len(harness.alerts) == 2


def test_a_restart_carries_on_from_the_tags() -> None:
    with make_harness(inflow_rate=10) as first:
        first.step(2)
    with DeviceHarness(
        PumpController(config=PumpConfig()), app_key=APP_KEY, agent=first.agent
    ) as second:
        second.step()
    assert [r["seq"] for r in second.published("sensors/tank")] == [0, 1, 2]
    assert second.tags["level"] == 80.0


def test_a_config_change_applies_at_the_next_loop(harness: DeviceHarness) -> None:
    harness.step()
    assert harness.app.loop_target_period == 1.0
    harness.set_config({"inflow_rate": 1, "loop_period": 0.25, "readings_channel": "tank"})
    harness.step()
    assert harness.app.loop_target_period == 0.25
    assert harness.published("tank") == [
        {"seq": 1, "level": 61.0, "pump_on": False, "mode": "auto"}
    ]
