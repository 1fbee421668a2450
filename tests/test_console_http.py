"""The console over plain HTTP and websockets, against a real ``fleetcloud serve --demo``:
what a browser cannot easily show — requests from other sites, the live socket's
sign-in, read-only tokens, and the forms working without JavaScript."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.test_console import Demo, demo_server

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with demo_server(tmp_path_factory.mktemp("console-http")) as running:
        yield running


@contextlib.contextmanager
def signed_in(demo: Demo, token: str | None = None) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo.url, timeout=10) as client:
        answer = client.post(
            "/signin", data={"token": token or demo.token}, headers={"Origin": demo.url}
        )
        assert answer.status_code == 303, answer.text
        yield client


def send(
    client: httpx.Client, demo: Demo, device: str, body: dict[str, Any], origin: str | None = None
) -> httpx.Response:
    return client.post(
        f"/devices/{demo.devices[device]}/ui_cmds",
        json=body,
        headers={"Accept": "application/json", "Origin": origin or demo.url},
    )


def test_requests_from_another_site_are_refused(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url) as client:
        answer = client.post("/signin", data={"token": demo.token}, headers={"Origin": EVIL})
        assert answer.status_code == 403
        assert "came from another site" in answer.text
        assert not client.cookies
    with signed_in(demo) as client:
        command = {"key": "pump_controller_target_level", "value": 50, "confirmed": True}
        refused = send(client, demo, "pump-station-1", command, origin=EVIL)
        assert refused.status_code == 403
        fetched = client.post(
            f"/devices/{demo.devices['pump-station-1']}/ui_cmds",
            json=command,
            headers={"Accept": "application/json", "Sec-Fetch-Site": "cross-site"},
        )
        assert fetched.status_code == 403
        assert client.post("/signout", headers={"Origin": EVIL}).status_code == 403
        assert client.get("/devices").status_code == 200  # still signed in


def test_pages_carry_a_strict_content_security_policy(demo: Demo) -> None:
    with signed_in(demo) as client:
        page = client.get("/devices")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text  # no inline script: the policy would block it


def test_the_vendored_chart_library_ships_with_its_licence(demo: Demo) -> None:
    base = f"{demo.url}/console/static/vendor/uplot-1.6.32"
    assert "MIT License" in httpx.get(f"{base}/LICENSE").text
    script = httpx.get(f"{base}/uPlot.iife.min.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]


def test_the_live_socket_signs_in_with_the_session_cookie(demo: Demo) -> None:
    url = demo.url.replace("http://", "ws://") + "/console/live"
    with pytest.raises(InvalidStatus):  # no session
        connect(url, additional_headers={"Origin": demo.url}, open_timeout=5)
    with signed_in(demo) as client:
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        with pytest.raises(InvalidStatus):  # a page on another site
            connect(url, additional_headers={"Origin": EVIL, "Cookie": cookie}, open_timeout=5)
        pump = demo.devices["pump-station-1"]
        with connect(url, additional_headers={"Origin": demo.url, "Cookie": cookie}) as socket:
            assert json.loads(socket.recv(5))["op"] == 10  # HELLO
            socket.send(json.dumps({"op": 2, "d": {}}))  # IDENTIFY, no token needed
            ready = json.loads(socket.recv(5))
            assert ready["t"] == "Ready"
            socket.send(
                json.dumps(
                    {"op": 12, "d": {"agent_id": demo.other_device, "channel_name": "sensors"}}
                )
            )
            assert json.loads(socket.recv(5))["d"]["status"] == 404  # another organisation's
            socket.send(json.dumps({"op": 12, "d": {"agent_id": pump, "channel_name": "sensors"}}))
            assert json.loads(socket.recv(5))["op"] == 14  # ACK
            frame = json.loads(socket.recv(10))
            assert frame["t"] in ("MessageCreate", "AggregateUpdate")
            assert frame["d"]["channel"] == {"agent_id": pump, "name": "sensors"}
        client.post("/signout", headers={"Origin": demo.url})
        with pytest.raises(InvalidStatus):  # the session has ended
            connect(url, additional_headers={"Origin": demo.url, "Cookie": cookie}, open_timeout=5)


def test_a_device_token_reads_but_cannot_send_commands(demo: Demo) -> None:
    created = demo.api("POST", "/api/agents", json={"name": "reader-device", "kind": "device"})
    with signed_in(demo, created["token"]) as client:
        page = client.get(f"/devices/{demo.devices['pump-station-1']}")
        assert page.status_code == 200
        assert "Your token may read this device but not send it commands." in page.text
        assert re.search(r'class="action colour-blue" disabled', page.text)
        refused = send(
            client,
            demo,
            "pump-station-1",
            {"key": "pump_controller_toggle_pump", "confirmed": True},
        )
        assert refused.status_code == 403
        assert (
            refused.json()["message"] == "Your token may read this device but not send it commands."
        )


def test_bad_commands_get_clear_messages(demo: Demo) -> None:
    with signed_in(demo) as client:
        unknown = send(client, demo, "pump-station-1", {"key": "pump_controller_nope", "value": 1})
        assert unknown.status_code == 404
        assert unknown.json()["message"] == "this device's UI has no control 'pump_controller_nope'"
        text = send(
            client, demo, "pump-station-1", {"key": "pump_controller_target_level", "value": "lots"}
        )
        assert text.status_code == 400
        assert text.json()["message"] == "Target level must be a number, not 'lots'"
        unconfirmed = send(client, demo, "pump-station-1", {"key": "pump_controller_toggle_pump"})
        assert unconfirmed.status_code == 409
        assert "needs confirming" in unconfirmed.json()["message"]
        anonymous = httpx.post(
            f"{demo.url}/devices/{demo.devices['pump-station-1']}/ui_cmds",
            json={"key": "pump_controller_toggle_pump"},
            headers={"Origin": demo.url},
        )
        assert anonymous.status_code == 401


def test_the_forms_work_without_javascript(demo: Demo) -> None:
    device = demo.devices["pump-station-1"]
    path = f"/devices/{device}/ui_cmds"
    with signed_in(demo) as client:
        form = {"key": "pump_controller_toggle_pump", "value": ""}
        asked = client.post(path, data=form, headers={"Origin": demo.url})
        assert asked.status_code == 200  # a confirmation page stands in for the dialog
        assert (
            "Send <strong>Start / stop pump</strong> to <strong>pump-station-1</strong>?"
            in asked.text
        )
        done = client.post(path, data={**form, "confirmed": "yes"}, headers={"Origin": demo.url})
        assert done.status_code == 303
        assert done.headers["location"] == f"/devices/{device}?sent=Start%20/%20stop%20pump#ui"
        assert "Sent: Start / stop pump" in client.get(done.headers["location"]).text
        level = {"key": "pump_controller_target_level", "value": "42"}
        assert client.post(path, data=level, headers={"Origin": demo.url}).status_code == 303
    aggregate, messages = demo.ui_cmds("pump-station-1")
    assert aggregate["pump_controller_target_level"] == 42
    assert messages[1]["data"] == {"pump_controller_toggle_pump": True}


def test_sign_in_returns_to_the_page_asked_for_and_only_on_this_site(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url) as client:
        asked = client.get(f"/devices/{demo.devices['cold-room-3']}")
        assert asked.status_code == 303
        target = asked.headers["location"]
        assert target.startswith("/signin?next=")
        next_path = httpx.URL(target).params["next"]
        answer = client.post(
            "/signin", data={"token": demo.token, "next": next_path}, headers={"Origin": demo.url}
        )
        assert answer.headers["location"] == f"/devices/{demo.devices['cold-room-3']}"
        away = client.post(
            "/signin",
            data={"token": demo.token, "next": "//evil.example/"},
            headers={"Origin": demo.url},
        )
        assert away.headers["location"] == "/devices"


def test_paths_are_checked(demo: Demo) -> None:
    with signed_in(demo) as client:
        assert client.get("/devices/not-a-number").status_code == 400
        assert client.get("/devices?page=abc&status=bogus").status_code == 200
        series = client.get(f"/devices/{demo.devices['weather-mast']}/series?channel=nope&field=t")
        assert series.status_code == 404
