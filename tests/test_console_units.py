"""The console's pure parts: connection state, the UI layout and the commands it writes,
what a page shows of channel data."""

from __future__ import annotations

from typing import Any

import pytest

from fleetcloud.console import layout, readings
from fleetcloud.console.connection import connection_state
from fleetcloud.console.pages import ago
from fleetcloud.console.sessions import safe_next
from fleetcloud.core.errors import BadRequest, Conflict
from fleetcloud.sdk import ui
from fleetcloud.sdk.connection import ConnectionStatus, ping_payload
from fleetcloud.sdk.ui_manager import UIManager

NOW = 1_795_332_781_225


def ping(online_ms: int, **config: Any) -> dict[str, Any]:
    status = {"status": "ContinuousOnline", "determination": "Online", "last_online": online_ms}
    return {"status": status, "config": config} if config else {"status": status}


def test_a_recent_ping_is_online_and_a_silent_device_goes_offline() -> None:
    assert connection_state(ping(NOW - 5_000), NOW).state == "online"
    assert connection_state(ping(NOW - 5_000), NOW).last_seen_ms == NOW - 5_000
    assert connection_state(ping(NOW - 2 * 3600_000), NOW).state == "offline"  # default: 1 h
    assert connection_state(ping(NOW - 90_000, offline_after=60), NOW).state == "offline"
    assert connection_state(ping(NOW - 30_000, offline_after=60), NOW).state == "online"


def test_connection_state_reads_what_the_sdk_writes() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.fromtimestamp(NOW / 1000, UTC)
    written = ping_payload(
        online_at=now - timedelta(minutes=2),
        now=now,
        connection_status=ConnectionStatus.periodic_unknown,
        connection_type=None,
        offline_at=now - timedelta(minutes=1),
        configured_offline_after=None,
        user_agent="test",
    )
    state = connection_state(written, NOW)
    assert (state.state, state.detail) == ("offline", "PeriodicUnknown")


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [
        (None, "unknown"),
        ({}, "unknown"),
        ({"status": {"status": "Unknown"}}, "unknown"),
        ({"status": {"determination": "Offline", "last_online": NOW}}, "offline"),
        ({"status": "online", "last_seen": NOW - 1000}, "online"),  # the older flat shape
        ({"status": "offline", "last_seen": NOW - 1000}, "offline"),
        ({"status": [1, 2]}, "unknown"),
    ],
)
def test_connection_state_of_odd_aggregates(aggregate: Any, expected: str) -> None:
    assert connection_state(aggregate, NOW).state == expected


def ui_state(*children: ui.Element, app_key: str = "pump") -> dict[str, Any]:
    manager = UIManager(app_key, "Pump")
    manager.add_children(*children)
    return {"state": {"children": {app_key: manager.render()}}}


def test_values_show_with_precision_units_and_ranges() -> None:
    level = ui.NumericVariable("level", "Level", precision=1, unit="%", curr_val=42.26)
    level.ranges = [ui.Range("low", 0, 20, "red"), ui.Range("ok", 20, 100, "green")]
    state = ui_state(
        level,
        ui.BooleanVariable("running", "Running", curr_val=True),
        ui.TextVariable("mode", "Mode"),
        ui.DateTimeVariable("since", "Since", curr_val=NOW),
    )
    [app] = layout.applications(state, {})
    texts = {n.name: (n.text, n.tone) for n in app.children}
    assert texts == {
        "level": ("42.3 %", "green"),
        "running": ("Yes", None),
        "mode": ("—", None),
        "since": ("2026-11-22 07:33:01 UTC", None),
    }


def test_children_follow_position_and_hidden_ones_are_left_out() -> None:
    state = ui_state(ui.TextVariable("b", "B"), ui.TextVariable("a", "A"))
    children = state["state"]["children"]["pump"]["children"]
    children["b"]["position"], children["a"]["position"] = 1, 0
    children["h"] = {"type": "uiVariable", "name": "h", "position": 2, "hidden": True}
    [app] = layout.applications(state, {})
    assert [n.name for n in app.children] == ["a", "b"]


def test_interactions_show_ui_cmds_or_their_default() -> None:
    state = ui_state(
        ui.NumericParameter("target", "Target", default=60, unit="%", precision=0),
        ui.Submodule("more", "More", [ui.BooleanParameter("auto", "Auto")]),
    )
    [app] = layout.applications(state, {"pump_auto": True})
    target, more = app.children
    assert (target.cmd_key, target.value, target.text) == ("pump_target", 60, "60 %")
    assert (more.children[0].cmd_key, more.children[0].text) == ("pump_auto", "Yes")
    assert layout.find_interaction(state, "pump_auto") is not None
    assert layout.find_interaction(state, "pump_more") is None  # a submodule takes no input
    assert layout.find_interaction(state, "other_target") is None


def test_user_input_becomes_the_value_written_to_ui_cmds() -> None:
    state = ui_state(
        ui.Action("go", "Go"),
        ui.NumericParameter("target", "Target", min_val=10, max_val=95, unit="%"),
        ui.BooleanParameter("auto", "Auto"),
        ui.TextParameter("note", "Note"),
        ui.Slider("fan", "Fan", min_val=0, max_val=100),
        ui.Action("off", "Off", disabled=True),
    )

    def value(key: str, raw: Any) -> Any:
        found = layout.find_interaction(state, key)
        assert found is not None
        return layout.command_value(found, raw)

    assert value("pump_go", None) is True
    assert value("pump_target", " 42 ") == 42
    assert value("pump_target", 42.5) == 42.5
    assert value("pump_auto", "on") is True
    assert value("pump_auto", "false") is False
    assert value("pump_note", "hello") == "hello"
    assert value("pump_fan", "100") == 100
    with pytest.raises(BadRequest, match="Target must be at most 95 %"):
        value("pump_target", "96")
    with pytest.raises(BadRequest, match="must be a number"):
        value("pump_target", "nan")
    with pytest.raises(BadRequest, match="must be a number"):
        value("pump_target", True)
    with pytest.raises(BadRequest, match="true or false"):
        value("pump_auto", "maybe")
    with pytest.raises(BadRequest, match="at most"):
        value("pump_note", "x" * (layout.MAX_TEXT + 1))
    with pytest.raises(Conflict, match="Off is disabled"):
        value("pump_off", None)


def test_chartable_fields_and_summaries() -> None:
    data = {"t": 21.5, "ok": True, "name": "x", "power": {"v": 12.1, "a": 0.4}, "list": [1]}
    assert readings.numeric_fields(data) == ["t", "power.v", "power.a"]
    assert readings.numeric_fields(data, limit=2) == ["t", "power.v"]
    assert readings.summary(data) == [("t", "21.5"), ("ok", "true"), ("name", "x")]
    assert readings.summary(7) == [("value", "7")]
    assert readings.is_reserved("ui_state")
    assert readings.is_reserved("dv-proc-inv-42")
    assert not readings.is_reserved("sensors")


def test_times_read_as_how_long_ago() -> None:
    assert ago(None) == "never"
    assert ago(NOW - 12_000, NOW) == "12 s ago"
    assert ago(NOW - 5 * 60_000, NOW) == "5 min ago"
    assert ago(NOW - 3 * 3600_000, NOW) == "3 h ago"
    assert ago(NOW + 5_000, NOW) == "0 s ago"  # a clock a little ahead


@pytest.mark.parametrize(
    ("asked", "goes_to"),
    [
        (None, "/devices"),
        ("/devices/5?channel=x", "/devices/5?channel=x"),
        ("//evil.example/", "/devices"),
        ("/\\evil.example", "/devices"),
        ("https://evil.example/", "/devices"),
    ],
)
def test_after_sign_in_only_pages_of_this_site(asked: str | None, goes_to: str) -> None:
    assert safe_next(asked) == goes_to
