"""The demo's processors (``fleetcloud.demo_apps.demo_farm``) through their own entry
points in the SDK's harness, and the package the demo deploys."""

from __future__ import annotations

import zipfile
from io import BytesIO
from typing import Any

import pytest

from fleetcloud import demo_apps
from fleetcloud.apps.packaging import config_problems, inspect_package, read_manifest
from fleetcloud.demo_apps.demo_farm import cold_room, config, pump
from fleetcloud.sdk.testing import AppHarness

SUBSCRIBED = {"dv_proc_subscriptions": config.SUBSCRIPTIONS}


def reading(temperature: float = 20.0, rssi: int = -70) -> dict[str, Any]:
    return {"temperature": temperature, "humidity": 61.5, "battery": 4.1, "rssi": rssi}


def value(harness: AppHarness, name: str) -> Any:
    element = harness.ui_element(name)
    assert element is not None, name
    return element.get("currentValue")


def alerts(harness: AppHarness) -> list[str]:
    return [alert["message"] for alert in harness.alerts]


@pytest.fixture
def pump_app() -> AppHarness:
    harness = AppHarness(
        handler=pump.handler, app_key="pump_controller", deployment_config=SUBSCRIBED
    )
    harness.invoke(harness.deployment())
    return harness


@pytest.fixture
def cold_app() -> AppHarness:
    harness = AppHarness(
        handler=cold_room.handler, app_key="cold_room", deployment_config=SUBSCRIBED
    )
    harness.invoke(harness.deployment())
    return harness


# ---------------------------------------------------------------- the pump controller


def test_the_pump_starts_from_the_console_and_stops_at_its_target(pump_app: AppHarness) -> None:
    assert alerts(pump_app) == ["Pump controller started"]
    assert value(pump_app, "tank_level") == 55
    assert value(pump_app, "pump_running") is False
    assert pump_app.tags["pump_starts"] == 0

    pump_app.invoke(pump_app.ui_command("target_level", 58))
    pump_app.invoke(pump_app.ui_command("toggle_pump", True))
    assert value(pump_app, "pump_running") is True
    assert "pump_controller_toggle_pump" not in pump_app.ui_cmds  # the press is cleared
    assert pump_app.ui_cmds["pump_controller_target_level"] == 58
    assert pump_app.tags["pump_starts"] == 1
    assert pump_app.tags["last_command"] == "toggle_pump"
    assert alerts(pump_app)[-1] == "Pump started from the console"

    pump_app.invoke(pump_app.message_create("sensors", reading(21.37)))
    assert value(pump_app, "tank_level") == 56  # 56.5, shown with precision 0
    assert value(pump_app, "water_temp") == 21.4
    assert value(pump_app, "flow_rate") > 10
    pump_app.invoke(pump_app.message_create("sensors", reading()))  # 58.0: the target
    assert value(pump_app, "pump_running") is False
    assert value(pump_app, "flow_rate") == 0
    assert alerts(pump_app)[-1] == "Pump stopped at the target level (58 %)"
    assert pump_app.tags["pump_starts"] == 1


def test_a_press_is_acted_on_once_when_a_reading_sees_it_first(pump_app: AppHarness) -> None:
    """A reading queued just before the press starts after it and finds the press in the
    ``ui_cmds`` aggregate; only the press's own message starts the pump."""
    press = pump_app.ui_command("toggle_pump", True)  # written, its invocation still queued
    pump_app.invoke(pump_app.message_create("sensors", reading()))
    assert value(pump_app, "pump_running") is False
    pump_app.invoke(press)
    assert value(pump_app, "pump_running") is True
    assert pump_app.tags["pump_starts"] == 1
    pump_app.invoke(press)  # a redelivery of the same message changes nothing
    assert value(pump_app, "pump_running") is True
    assert alerts(pump_app).count("Pump started from the console") == 1


def test_a_low_tank_and_a_weak_signal_are_reported_once(pump_app: AppHarness) -> None:
    pump_app.invoke(pump_app.message_create("sensors", reading()))
    for _ in range(100):  # the tank drains 0.4 % a reading while the pump is off
        pump_app.invoke(pump_app.message_create("sensors", reading(rssi=-90)))
    assert value(pump_app, "tank_level") == 15
    assert [a for a in alerts(pump_app) if a.startswith("Tank level low")] == [
        "Tank level low: 20 %"
    ]
    diagnostics = pump_app.ui_element("diagnostics")
    assert diagnostics is not None
    assert diagnostics["statusString"] == "Signal weak"
    assert value(pump_app, "rssi") == -90


# ---------------------------------------------------------------- the cold room


def test_defrost_and_fan_speed_from_the_console(cold_app: AppHarness) -> None:
    assert alerts(cold_app) == ["Cold room controller started"]
    assert value(cold_app, "mode") == "Cooling"
    cold_app.invoke(cold_app.ui_command("defrost", True))
    assert value(cold_app, "mode") == "Defrosting"
    assert cold_app.tags["defrost_cycles"] == 1
    cold_app.invoke(cold_app.message_create("sensors", reading(14.0)))
    assert value(cold_app, "room_temp") == 1.0  # 14 − 16 + 3 while defrosting
    assert value(cold_app, "humidity") == 62  # precision 0
    assert value(cold_app, "mode") == "Defrosting"  # still on, from ui_cmds
    cold_app.invoke(cold_app.ui_command("defrost", False))
    cold_app.invoke(cold_app.ui_command("defrost", True))
    assert cold_app.tags["defrost_cycles"] == 2
    cold_app.invoke(cold_app.ui_command("fan_speed", 70))
    assert cold_app.tags["fan_speed"] == 70


def test_a_warm_cold_room_raises_one_alert_until_it_cools(cold_app: AppHarness) -> None:
    for temperature in (25.0, 26.0, 27.0, 20.0, 25.5):
        cold_app.invoke(cold_app.message_create("sensors", reading(temperature)))
    warm = [a for a in alerts(cold_app) if a.startswith("Cold room above")]
    assert warm == ["Cold room above 8 °C: 9.0 °C", "Cold room above 8 °C: 9.5 °C"]


# ---------------------------------------------------------------- the package


def test_the_package_is_the_same_for_the_same_source_and_passes_the_checks() -> None:
    data = demo_apps.package("demo_farm")
    assert demo_apps.package("demo_farm") == data  # a restarted demo deploys nothing new
    names = sorted(zipfile.ZipFile(BytesIO(data)).namelist())
    assert names == [
        "src/demo_farm/__init__.py",
        "src/demo_farm/cold_room.py",
        "src/demo_farm/config.py",
        "src/demo_farm/pump.py",
    ]
    document = demo_apps.doover_config("demo_farm")
    for name in ("pump_controller", "cold_room"):
        manifest = read_manifest(document, name)
        assert manifest.type == "PRO"
        inspect_package(data, manifest, max_unpacked=1024 * 1024)
        assert config_problems(manifest.config_schema, SUBSCRIBED) == []
        assert config_problems(manifest.config_schema, {"dv_proc_subscriptions": "sensors"})
    with pytest.raises(ValueError, match="no demo app project 'nope'"):
        demo_apps.doover_config("nope")
