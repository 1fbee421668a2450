"""The console's commands pages against real processes: ``fleetcloud serve --mqtt-url``,
a Mosquitto configured by ``fleetcloud mqtt broker-config``, and a device on MQTT that
receives commands and acknowledges them when the test says so — over HTTP and in a real
Chromium, where a command's status timeline must change live."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import Browser, Page, expect

from fleetcloud.connectors import topics
from fleetcloud.console.commands import PushForm, metadata_of
from tests.browser import LAPTOP, PHONE, Tab, open_tab
from tests.servers.fleetcloud import Server, cli, cli_json
from tests.servers.mosquitto import free_port, mosquitto_broker
from tests.test_console import measure

DEADLINE = 30.0


class Device:
    """A device on MQTT: takes its commands, acknowledges one when asked."""

    def __init__(self, port: int, agent_id: str, token: str) -> None:
        self.agent_id = agent_id
        self.port = port
        self.received: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{agent_id}")
        self.client.username_pw_set(agent_id, token)
        self.client.on_connect = self.connected
        self.client.on_message = self.message

    def connected(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(topics.command_topic(self.agent_id), qos=1)
        client.publish(topics.status_topic(self.agent_id), b"online", qos=1)

    def message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        with self.changed:
            self.received[body["request_id"]] = body
            self.changed.notify_all()

    def wait_for(self, request_id: str) -> dict[str, Any]:
        with self.changed:
            if not self.changed.wait_for(lambda: request_id in self.received, DEADLINE):
                raise AssertionError(f"the device never received {request_id}")
            return self.received[request_id]

    def ack(self, request_id: str, status: str, reason: str | None = None) -> None:
        body = {"request_id": request_id, "status": status, "reason": reason}
        sent = self.client.publish(topics.ack_topic(self.agent_id), json.dumps(body), qos=1)
        sent.wait_for_publish(DEADLINE)

    @contextlib.contextmanager
    def online(self) -> Iterator[Device]:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        try:
            yield self
        finally:
            self.client.disconnect()
            self.client.loop_stop()


@dataclass
class Setup:
    url: str
    token: str
    device: Device
    devices: dict[str, str]  # name -> agent id
    device_tokens: dict[str, str]
    other_token: str  # another organisation's admin
    other_device: str
    pushed: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        answer = httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def push(self, device: str, command_type: str, token: str | None = None) -> str:
        body = {
            "device_id": device,
            "command_type": command_type,
            "payload": {"n": 1},
            "protocol": "mqtt",
            "parser_script_ref": "json_passthrough.py",
            "metadata": {"topic": topics.command_topic(device), "qos": 1},
        }
        answer = self.api("POST", "/api/commands", token=token, json=body)
        request_id: str = answer["request_id"]
        return request_id

    def status(self, request_id: str) -> str:
        found: str = self.api("GET", f"/api/commands/{request_id}")["status"]
        return found

    def count(self, device: str) -> int:
        return len(self.api("GET", f"/api/agents/{self.devices[device]}/commands"))


def make_device(database: str, organisation: str, name: str) -> dict[str, str]:
    return cli_json(
        "device", "create", name, "--org", organisation, "--database", database, "--json"
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("console-commands")
    database = f"sqlite:///{directory / 'fleet.db'}"
    org = cli_json("org", "create", "Valves Inc", "--database", database, "--json")
    made = {name: make_device(database, org["organisation_id"], name) for name in ("valve", "gate")}
    valve = made["valve"]
    cli("mqtt", "enroll", valve["agent_id"], "--token", valve["token"], "--database", database)
    other = cli_json("org", "create", "Elsewhere", "--database", database, "--json")
    far = make_device(database, other["organisation_id"], "far-away")
    port = free_port()
    written = cli_json(
        "mqtt", "broker-config", "--org", org["organisation_id"], "--out", str(directory / "mq"),
        "--port", str(port), "--run-as", "root", "--database", database, "--json",
    )  # fmt: skip
    with mosquitto_broker(Path(written["config"]), port):
        server = Server(database, extra=("--mqtt-url", written["connector_url"]))
        server.start()
        device = Device(port, valve["agent_id"], valve["token"])
        try:
            with device.online():
                yield Setup(
                    server.url,
                    org["token"],
                    device,
                    {name: d["agent_id"] for name, d in made.items()},
                    {name: d["token"] for name, d in made.items()},
                    other["token"],
                    far["agent_id"],
                )
        finally:
            server.stop()


@contextlib.contextmanager
def signed_in(setup: Setup, token: str | None = None) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=setup.url, timeout=10) as client:
        answer = client.post(
            "/signin", data={"token": token or setup.token}, headers={"Origin": setup.url}
        )
        assert answer.status_code == 303, answer.text
        yield client


def form(setup: Setup, **changes: str) -> dict[str, str]:
    values = {
        "device_id": setup.devices["valve"],
        "command_type": "open",
        "protocol": "mqtt",
        "parser_script_ref": "json_passthrough.py",
        "payload": '{"percent": 40}',
        "qos": "1",
        "retain": "false",
    }
    values.update(changes)
    return values


# ---------------------------------------------------------------- the form, pure


def test_the_form_fills_in_the_protocol_metadata() -> None:
    mqtt_form = PushForm(protocol="mqtt", qos="2", retain=True, ack="device")
    assert metadata_of(mqtt_form, 42) == {
        "topic": "fleetcloud/42/commands",  # the device's own, when none is given
        "qos": 2,
        "retain": True,
        "ack": "device",
    }
    given = PushForm(protocol="mqtt", metadata='{"topic": "fleetcloud/42/x", "note": 1}')
    assert metadata_of(given, 42) == {
        "topic": "fleetcloud/42/x",
        "note": 1,
        "qos": 1,
        "retain": False,
    }
    coap_form = PushForm(protocol="coap", path="/cmd", confirmable=False, metadata="[1]")
    assert metadata_of(coap_form, 42) == {"path": "/cmd", "confirmable": False}
    assert coap_form.errors == {"metadata": "metadata must be a JSON object"}


# ---------------------------------------------------------------- over HTTP


def test_a_bad_command_is_refused_with_the_reason_and_the_form_kept(setup: Setup) -> None:
    before = setup.count("valve")
    cases = [
        ({"payload": '{"percent": '}, 400, "payload: this is not valid JSON"),
        ({"payload": "[1, 2]"}, 400, "the payload must be a JSON object"),
        ({"command_type": "no spaces"}, 422, "invalid command: command_type: String should"),
        ({"parser_script_ref": "missing.py"}, 400, "missing.py"),
        ({"metadata": '{"qos": 7}', "qos": "x"}, 422, "metadata.qos must be 0, 1 or 2"),
        ({"expires_in": "-5"}, 400, "expires_in: give a whole number of seconds"),
    ]
    with signed_in(setup) as client:
        for changes, status, message in cases:
            answer = client.post("/commands", data=form(setup, **changes), headers=origin(setup))
            assert answer.status_code == status, (changes, answer.text[-500:])
            assert "The command was not sent:" in answer.text
            assert message in answer.text, changes
            for value in changes.values():
                assert html_escaped(value) in answer.text  # what was typed comes back
    assert setup.count("valve") == before


def html_escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&#34;").replace("<", "&lt;")


def origin(setup: Setup) -> dict[str, str]:
    return {"Origin": setup.url}


def test_pushing_without_javascript_shows_the_command(setup: Setup) -> None:
    with signed_in(setup) as client:
        refused = client.post("/commands", data=form(setup), headers={"Origin": "http://x.y"})
        assert refused.status_code == 403
        pushed = client.post(
            "/commands", data=form(setup, command_type="close"), headers=origin(setup)
        )
        assert pushed.status_code == 303
        request_id = pushed.headers["location"].rsplit("/", 1)[1]
        body = setup.device.wait_for(request_id)  # delivered through the real connector
        assert body["command_type"] == "close"
        assert body["payload"] == {"percent": 40}
        page = client.get(f"/commands/{request_id}")
        assert page.status_code == 200
        assert "Status timeline" in page.text
        assert "QUEUED" in page.text
        listed = client.get("/commands?status=" + setup.status(request_id))
        assert request_id in listed.text
        answer = client.get(f"/commands/{request_id}", headers={"Accept": "application/json"})
        assert answer.json()["history"][0]["status"] == "QUEUED"


def test_another_organisations_commands_are_not_found(setup: Setup) -> None:
    theirs = setup.push(setup.other_device, "secret", token=setup.other_token)
    with signed_in(setup) as client:
        for accept in ("text/html", "application/json"):
            answer = client.get(f"/commands/{theirs}", headers={"Accept": accept})
            assert answer.status_code == 404
            assert "does not exist" in answer.text
        assert theirs not in client.get("/commands").text
        pushed = client.post(
            "/commands", data=form(setup, device_id=setup.other_device), headers=origin(setup)
        )
        assert pushed.status_code == 404
        assert f"agent {setup.other_device} does not exist" in pushed.text


def test_a_device_token_commands_only_its_own_device(setup: Setup) -> None:
    gate = setup.devices["gate"]
    with signed_in(setup, setup.device_tokens["gate"]) as client:
        page = client.get("/commands")
        assert page.status_code == 200
        assert f'<option value="{gate}"' in page.text
        assert f'<option value="{setup.devices["valve"]}"' not in page.text
        valve = client.post("/commands", data=form(setup), headers=origin(setup))
        assert valve.status_code == 403
        outside = form(setup, device_id=gate, topic="elsewhere/commands")
        refused = client.post("/commands", data=outside, headers=origin(setup))
        assert refused.status_code == 403
        assert f"the topic must be under fleetcloud/{gate}/" in refused.text
        own = client.post("/commands", data=form(setup, device_id=gate), headers=origin(setup))
        assert own.status_code == 303


def test_the_commands_channel_is_not_taken_for_a_reading(setup: Setup) -> None:
    """Transitions are bookkeeping: the devices list and the device page's chart stay
    with the device's own data."""
    setup.push(setup.devices["gate"], "ping")
    with signed_in(setup) as client:
        listed = client.get("/devices")
        device = client.get(f"/devices/{setup.devices['gate']}")
    row = listed.text.split(f'data-agent="{setup.devices["gate"]}"', 1)[1].split("</tr>", 1)[0]
    assert "commands:" not in row
    assert 'data-reading-channel="commands"' not in listed.text
    assert "This device has published no data yet." in device.text


# ---------------------------------------------------------------- in the browser


def sign_in(page: Page, setup: Setup) -> None:
    page.goto(setup.url + "/signin?next=/commands")
    page.fill("#token", setup.token)
    page.press("#token", "Enter")
    expect(page).to_have_url(re.compile(r"/commands$"))


def timeline(page: Page) -> list[str]:
    found: list[str] = page.locator("[data-timeline] li").evaluate_all(
        "items => items.map(li => li.dataset.status)"
    )
    return found


@pytest.mark.browser
def test_push_a_command_and_watch_its_status(tab: Tab, setup: Setup) -> None:
    page = tab.page
    sign_in(page, setup)
    page.get_by_label("Device", exact=True).select_option(label="valve")
    expect(page.get_by_label("Topic")).to_have_attribute(
        "placeholder", f"fleetcloud/{setup.devices['valve']}/commands"
    )
    page.get_by_label("Payload (a JSON object)").fill('{"percent": 75}')
    page.get_by_label("Command type").fill("set_opening")
    page.get_by_label("Command type").press("Enter")  # keyboard submits
    expect(page).to_have_url(re.compile(r"/commands/[0-9a-f-]{36}$"))
    request_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("h1")).to_have_text("set_opening")
    page.evaluate("window.stayed = true")  # what follows must arrive without a reload

    body = setup.device.wait_for(request_id)
    assert body["payload"] == {"percent": 75}
    current = page.locator("[data-current] [data-cmd-status]")
    expect(current).to_have_text("DELIVERED")  # QoS 1: the broker has it
    assert timeline(page)[0] == "QUEUED"

    setup.device.ack(request_id, "SUCCEEDED")
    expect(current).to_have_text("SUCCEEDED")
    expect(page.locator("[data-timeline] li").last).to_contain_text("SUCCEEDED")
    expect(page.locator("[data-timeline-note]")).to_have_text(
        "Final: this command will not change again."
    )
    assert timeline(page) == [h["status"] for h in history(setup, request_id)]
    assert page.evaluate("window.stayed") is True

    page.get_by_role("navigation", name="Sections").get_by_role("link", name="Commands").click()
    row = page.locator(f"tr[data-request='{request_id}']")
    expect(row.locator("[data-cmd-status]")).to_have_text("SUCCEEDED")


def history(setup: Setup, request_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = setup.api("GET", f"/api/commands/{request_id}")["history"]
    return found


@pytest.mark.browser
def test_the_list_follows_commands_live(tab: Tab, setup: Setup) -> None:
    page = tab.page
    sign_in(page, setup)
    expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
    page.evaluate("window.stayed = true")
    request_id = setup.push(setup.devices["valve"], "flush")  # pushed elsewhere: the API
    row = page.locator(f"tr[data-request='{request_id}']")
    expect(row).to_contain_text("flush")
    expect(row).to_contain_text("valve")
    setup.device.wait_for(request_id)
    setup.device.ack(request_id, "FAILED", "valve stuck")
    expect(row.locator("[data-cmd-status]")).to_have_text("FAILED")
    expect(row.locator("[data-cmd-reason]")).to_have_text("valve stuck")
    assert page.evaluate("window.stayed") is True
    row.get_by_role("link", name="flush").click()
    expect(page.locator("[data-timeline] li").last).to_contain_text("valve stuck")


@pytest.mark.browser
def test_a_bad_payload_is_caught_before_sending(tab: Tab, setup: Setup) -> None:
    page = tab.page
    sign_in(page, setup)
    before = setup.count("valve")
    page.get_by_label("Device", exact=True).select_option(label="valve")
    page.get_by_label("Command type").fill("open")
    payload = page.get_by_label("Payload (a JSON object)")
    payload.fill('{"percent": 40')
    page.get_by_role("button", name="Push command").click()
    expect(payload).to_be_focused()
    expect(payload).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#payload-error")).to_contain_text("this is not valid JSON")
    payload.fill("[40]")
    page.get_by_role("button", name="Push command").click()
    expect(page.locator("#payload-error")).to_have_text(
        'this must be a JSON object, such as {"level": 80}'
    )
    assert setup.count("valve") == before
    page.get_by_label("Protocol").select_option("coap")  # CoAP's fields instead of MQTT's
    expect(page.get_by_label("Path")).to_be_visible()
    expect(page.get_by_label("Topic")).to_be_hidden()
    assert setup.count("valve") == before


@pytest.mark.browser
@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_commands_pages_fit_without_horizontal_scrolling(
    browser: Browser, setup: Setup, viewport: dict[str, int]
) -> None:
    request_id = setup.push(setup.devices["gate"], "reboot")
    tab = open_tab(browser, viewport)
    page = tab.page
    widths = {}
    try:
        sign_in(page, setup)
        for path in ("/commands", f"/commands/{request_id}"):
            page.goto(setup.url + path)
            page.wait_for_load_state("networkidle")
            widths[path] = page.evaluate("document.documentElement.scrollWidth")
    finally:
        page.context.close()
    assert widths == dict.fromkeys(widths, viewport["width"])
    assert tab.errors == []


def test_commands_render_times_are_measured(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a benchmark gate: prints each page's server time (docs/benchmarks.md)."""
    request_id = setup.push(setup.devices["gate"], "status")
    with signed_in(setup) as client:
        report = [
            measure(client, "commands", "/commands"),
            measure(client, "command", f"/commands/{request_id}"),
        ]
    with capsys.disabled():
        print("\nconsole commands render times (20 requests each):\n  " + "\n  ".join(report))
