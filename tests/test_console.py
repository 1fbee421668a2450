"""The web console in a real Chromium, against a real ``fleetcloud serve --demo``.

Chromium is Debian's ``chromium`` package (``./dev test`` installs it), driven by
Playwright. Every page a test opens must log no console error. Render times are measured
and printed, never asserted (docs/benchmarks.md, "Console").
"""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import LAPTOP, PHONE, Tab, open_tab
from tests.servers.fleetcloud import cli_json
from tests.servers.postgres import free_port

pytestmark = pytest.mark.browser

FLEETCLOUD = [sys.executable, "-m", "fleetcloud.cli"]


# ---------------------------------------------------------------- a demo server


@dataclass
class Demo:
    url: str
    token: str
    devices: dict[str, str]  # name -> agent id
    other_device: str  # a device of another organisation
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        response = httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def ui_cmds(self, device: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The device's ``ui_cmds`` aggregate and its messages, newest first."""
        agent = self.devices[device]
        channel = f"/api/agents/{agent}/channels/ui_cmds"
        headers = {"Authorization": f"Bearer {self.token}"}
        found = httpx.get(self.url + channel + "/aggregate", headers=headers, timeout=10)
        if found.status_code == 404:  # nobody has sent a command yet
            return {}, []
        found.raise_for_status()
        return found.json()["data"], self.api("GET", channel + "/messages")


def read_banner(log: Path, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "web console:" in text:
            return text
        if process.poll() is not None:
            raise RuntimeError(f"fleetcloud exited early:\n{text[-3000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"no demo banner within {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def demo_server(directory: Path) -> Iterator[Demo]:
    port = free_port()
    database = f"sqlite:///{directory / 'console.sqlite'}"
    log = directory / "server.log"
    # Another organisation, made first: the console must never show its devices.
    other = cli_json("org", "create", "Other Org", "--database", database, "--json")
    secret = cli_json(
        "device", "create", "secret-device", "--org", other["organisation_id"],
        "--database", database, "--json",
    )  # fmt: skip
    args = ["serve", "--port", str(port), "--database", database, "--demo"]
    with log.open("ab") as out:
        process = subprocess.Popen([*FLEETCLOUD, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        banner = read_banner(log, process, timeout=30)
        token = re.search(r"admin token:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        listed = re.search(r"devices:\s+(.+)", banner).group(1)  # type: ignore[union-attr]
        devices = dict(re.findall(r"([\w-]+) \((\d+)\)", listed))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(url + "/healthz", timeout=1).raise_for_status(), 30)
        yield Demo(url, token, devices, secret["agent_id"], process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(check: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, httpx.HTTPError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with demo_server(tmp_path_factory.mktemp("console")) as running:
        yield running


# ---------------------------------------------------------------- the browser


def sign_in(page: Page, demo: Demo, token: str | None = None) -> None:
    page.goto(demo.url + "/")
    page.fill("#token", token or demo.token)
    page.click("button:has-text('Sign in')")
    expect(page).to_have_url(re.compile(r"/devices$"))


def row(page: Page, demo: Demo, device: str) -> Any:
    return page.locator(f"tr[data-agent='{demo.devices[device]}']")


# ---------------------------------------------------------------- sign-in and devices


def test_sign_in_by_keyboard_shows_the_demo_devices_live(tab: Tab, demo: Demo) -> None:
    page = tab.page
    page.goto(demo.url + "/")
    expect(page).to_have_url(re.compile(r"/signin"))
    expect(page.locator("#token")).to_be_focused()  # autofocus: type straight away
    page.keyboard.type(demo.token)
    page.keyboard.press("Tab")
    expect(page.locator("button:has-text('Sign in')")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/devices$"))
    for name in ("pump-station-1", "weather-mast", "cold-room-3"):
        expect(row(page, demo, name).locator("a").first).to_have_text(name)
        expect(row(page, demo, name).locator("[data-status]")).to_have_text("Online")
    expect(page.get_by_text("secret-device")).to_have_count(0)  # another organisation's
    expect(row(page, demo, "pump-station-1")).to_contain_text("north-field")
    reading = row(page, demo, "pump-station-1").locator("[data-reading]")
    expect(reading).to_contain_text("temperature")
    before = reading.inner_text()
    expect(reading).not_to_have_text(before, timeout=10_000)  # live, without a reload
    expect(page.locator("#live-status")).to_have_attribute("data-state", "open")


def test_a_bad_token_is_refused_with_a_clear_message(tab: Tab, demo: Demo) -> None:
    tab.expected_statuses.add(401)
    page = tab.page
    page.goto(demo.url + "/signin")
    page.fill("#token", "fc_not-a-real-token")
    with page.expect_response(lambda r: r.url.endswith("/signin")) as answer:
        page.press("#token", "Enter")
    assert answer.value.status == 401
    alert = page.get_by_role("alert")
    expect(alert).to_have_text("That token was not accepted: it is unknown, revoked or expired.")
    expect(page.locator("#token")).to_have_attribute("aria-invalid", "true")
    assert page.context.cookies() == []
    page.goto(demo.url + "/devices")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fdevices"))


def test_search_and_filters(tab: Tab, demo: Demo) -> None:
    spare = demo.api("POST", "/api/agents", json={"name": "spare-sensor", "kind": "device"})
    page = tab.page
    sign_in(page, demo)
    page.select_option("#status", "unknown")  # submits by itself (progressive enhancement)
    expect(page).to_have_url(re.compile(r"status=unknown"))
    rows = page.locator("tr[data-agent]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("spare-sensor")
    expect(rows.first.locator("[data-status]")).to_have_text("Never seen")
    page.goto(demo.url + "/devices")
    page.fill("#q", "PUMP")
    page.press("#q", "Enter")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("pump-station-1")
    page.goto(demo.url + "/devices")
    page.select_option("#group", label="north-field")
    expect(rows).to_have_count(2)
    expect(page.locator("tbody")).not_to_contain_text("cold-room-3")
    page.goto(demo.url + f"/devices?q={spare['id']}")  # by id, without JavaScript's help
    expect(rows).to_have_count(1)
    page.goto(demo.url + "/devices?q=no-such-device")
    expect(page.get_by_text("No device matches these filters.")).to_be_visible()


def test_sign_out_ends_the_session(tab: Tab, demo: Demo) -> None:
    page = tab.page
    sign_in(page, demo)
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["value"] != demo.token  # the browser keeps a session, not the token
    page.click("button:has-text('Sign out')")
    expect(page).to_have_url(re.compile(r"/signin\?signed_out=1"))
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    assert page.context.cookies() == []
    page.goto(demo.url + "/devices")
    expect(page).to_have_url(re.compile(r"/signin"))
    replayed = httpx.get(
        demo.url + "/devices", cookies={cookie["name"]: cookie["value"]}, follow_redirects=False
    )
    assert replayed.status_code == 303  # a copied cookie is worth nothing afterwards


# ---------------------------------------------------------------- a device


def test_device_page_shows_the_ui_and_live_data(tab: Tab, demo: Demo) -> None:
    page = tab.page
    sign_in(page, demo)
    page.click("text=pump-station-1")
    expect(page.locator("h1")).to_have_text("pump-station-1")
    ui = page.locator("[data-ui-app='pump_controller']")
    expect(ui.locator("h3")).to_have_text("Pump controller")
    level = ui.locator("[data-ui-node='pump_controller/tank_level/uiVariable'] [data-ui-value]")
    expect(level).to_have_text(re.compile(r"^\d+ %$"))  # precision 0, units
    temp = ui.locator("[data-ui-node='pump_controller/water_temp/uiVariable'] [data-ui-value]")
    expect(temp).to_have_text(re.compile(r"^-?\d+\.\d °C$"))
    expect(ui.locator("details.ui-submodule summary")).to_contain_text("Diagnostics")
    expect(ui.locator("[data-ui-status]")).to_have_text(re.compile(r"Signal (good|weak)"))
    battery = ui.locator("[data-ui-node='pump_controller/battery/uiVariable'] [data-ui-value]")
    expect(battery).to_have_text(re.compile(r"^\d\.\d\d V$"))
    expect(page.locator("#alerts")).to_contain_text("Pump controller started")
    expect(page.locator("#tags")).to_contain_text("pump_starts")
    expect(page.locator("[data-charts] canvas")).to_have_count(4)  # one per numeric field
    history = page.locator("[data-history] tr")
    first = history.first.inner_text()
    expect(history.first).not_to_have_text(first, timeout=10_000)  # new messages arrive
    sensors = page.locator("details[data-channel='sensors'] [data-aggregate]")
    before = sensors.inner_text()
    expect(sensors).not_to_have_text(before, timeout=10_000)


def test_a_new_ui_layout_appears_without_a_reload(tab: Tab, demo: Demo) -> None:
    page = tab.page
    sign_in(page, demo)
    weather = demo.devices["weather-mast"]
    page.goto(f"{demo.url}/devices/{weather}")
    expect(page.locator("#device-ui")).to_contain_text("This device shows no UI yet")
    # the page's live connection is up (and has asked for its channels) before the change
    expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
    notes = {
        "type": "uiApplication", "name": "notes", "displayString": "Field notes",
        "children": {
            "wind": {"type": "uiVariable", "name": "wind", "displayString": "Wind",
                     "position": 0, "varType": "float", "currentValue": 3.14159,
                     "decPrecision": 2, "units": "m/s"},
        },
    }  # fmt: skip
    path = f"/api/agents/{weather}/channels/ui_state/aggregate"
    demo.api("PATCH", path, json={"state": {"children": {"notes": notes}}})
    try:
        app = page.locator("[data-ui-app='notes']")
        expect(app.locator("h3")).to_have_text("Field notes", timeout=15_000)
        expect(app.locator("[data-ui-value]")).to_have_text("3.14 m/s")
        notes["children"]["wind"]["currentValue"] = 7  # type: ignore[index]
        demo.api("PATCH", path, json={"state": {"children": {"notes": notes}}})
        expect(app.locator("[data-ui-value]")).to_have_text("7.00 m/s")
    finally:
        demo.api("PATCH", path, json={"state": {"children": {"notes": None}}})
    expect(page.locator("#device-ui")).to_contain_text("This device shows no UI yet")


def test_pressing_an_action_writes_ui_cmds(tab: Tab, demo: Demo) -> None:
    page = tab.page
    sign_in(page, demo)
    page.goto(demo.url + f"/devices/{demo.devices['pump-station-1']}")
    running = page.locator("[data-ui-node='pump_controller/pump_running/uiVariable'] .value")
    expect(running).to_have_text("No")
    button = page.get_by_role("button", name="Start / stop pump")
    _, sent_before = demo.ui_cmds("pump-station-1")

    button.click()  # requiresConfirm: a dialog asks first; cancelling sends nothing
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Start / stop pump")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()

    button.focus()  # and by keyboard: Enter presses, the dialog focuses Confirm, Enter sends
    page.keyboard.press("Enter")
    expect(dialog.get_by_role("button", name="Confirm")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator(".toast")).to_contain_text("Sent: Start / stop pump")
    _, sent = demo.ui_cmds("pump-station-1")
    assert len(sent) == len(sent_before) + 1
    assert sent[0]["data"] == {"pump_controller_toggle_pump": True}
    expect(running).to_have_text("Yes")  # the demo's pump controller saw the command
    expect(page.locator("details[data-channel='ui_cmds']")).to_have_count(1)  # a new channel
    expect(page.locator("#alerts")).to_contain_text("Pump started from the console")


def test_changing_a_parameter_writes_ui_cmds(tab: Tab, demo: Demo) -> None:
    page = tab.page
    sign_in(page, demo)
    page.goto(demo.url + f"/devices/{demo.devices['pump-station-1']}")
    target = page.get_by_label("Target level")
    target.fill("80")
    target.press("Enter")  # keyboard only; parameters need no confirmation
    expect(page.locator(".toast").last).to_contain_text("Target level set to 80 %")
    form = page.locator("form[data-cmd-key='pump_controller_target_level']")
    expect(form.locator("[data-ui-current]")).to_have_text("80 %")
    aggregate, sent = demo.ui_cmds("pump-station-1")
    assert aggregate["pump_controller_target_level"] == 80
    assert sent[0]["data"] == {"pump_controller_target_level": 80}

    target.fill("200")  # above max: the browser refuses, nothing is sent
    target.press("Enter")
    assert demo.ui_cmds("pump-station-1")[0]["pump_controller_target_level"] == 80
    refused = page.request.post(
        demo.url + f"/devices/{demo.devices['pump-station-1']}/ui_cmds",
        headers={"Accept": "application/json", "Origin": demo.url},
        data={"key": "pump_controller_target_level", "value": 200, "confirmed": True},
    )
    assert refused.status == 400
    assert refused.json()["message"] == "Target level must be at most 95 %"


def test_a_boolean_parameter_and_a_slider(tab: Tab, demo: Demo) -> None:
    page = tab.page
    sign_in(page, demo)
    page.goto(demo.url + f"/devices/{demo.devices['cold-room-3']}")
    ui = page.locator("[data-ui-app='cold_room']")
    mode = ui.locator("[data-ui-node='cold_room/mode/uiVariable'] .value")
    expect(mode).to_have_text("Cooling")
    page.get_by_label("Defrost cycle").check()
    expect(mode).to_have_text("Defrosting")
    assert demo.ui_cmds("cold-room-3")[0]["cold_room_defrost"] is True
    slider = page.get_by_label("Fan speed")
    slider.focus()
    page.keyboard.press("ArrowRight")  # 50 → 60, sent when the value is committed
    expect(page.locator(".toast").last).to_contain_text("Fan speed set to 60 %")
    assert demo.ui_cmds("cold-room-3")[0]["cold_room_fan_speed"] == 60


def test_another_organisations_device_is_not_found(tab: Tab, demo: Demo) -> None:
    tab.expected_statuses.add(404)
    page = tab.page
    sign_in(page, demo)
    for path in ("", "/ui", "/series?channel=sensors&field=temperature"):
        response = page.goto(f"{demo.url}/devices/{demo.other_device}{path}")
        assert response is not None
        assert response.status == 404, path
    page.goto(f"{demo.url}/devices/{demo.other_device}")
    expect(page.get_by_role("alert")).to_have_text(f"agent {demo.other_device} does not exist")
    sent = page.request.post(
        f"{demo.url}/devices/{demo.other_device}/ui_cmds",
        headers={"Accept": "application/json", "Origin": demo.url},
        data={"key": "x_y", "value": True, "confirmed": True},
    )
    assert sent.status == 404


# ---------------------------------------------------------------- manners


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_pages_fit_without_horizontal_scrolling(
    browser: Browser, demo: Demo, viewport: dict[str, int]
) -> None:
    tab = open_tab(browser, viewport)
    page = tab.page
    try:
        page.goto(demo.url + "/signin")
        widths = {"sign-in": page.evaluate("document.documentElement.scrollWidth")}
        sign_in(page, demo)
        widths["devices"] = page.evaluate("document.documentElement.scrollWidth")
        for name, agent in demo.devices.items():
            page.goto(f"{demo.url}/devices/{agent}")
            expect(page.locator("h1")).to_have_text(name)
            page.wait_for_load_state("networkidle")
            widths[name] = page.evaluate("document.documentElement.scrollWidth")
    finally:
        page.context.close()
    assert widths == dict.fromkeys(widths, viewport["width"])
    assert tab.errors == []


def test_server_render_times_are_measured(demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a benchmark gate: prints each page's server time for docs/benchmarks.md."""
    report = []
    with httpx.Client(base_url=demo.url, timeout=10) as anonymous:
        report.append(measure(anonymous, "sign-in", "/signin"))
    with httpx.Client(base_url=demo.url, timeout=10) as client:
        signed = client.post("/signin", data={"token": demo.token}, headers={"Origin": demo.url})
        assert signed.status_code == 303
        assert client.cookies
        report.append(measure(client, "devices", "/devices"))
        for name, agent in demo.devices.items():
            report.append(measure(client, name, f"/devices/{agent}"))
    with capsys.disabled():
        print("\nconsole render times (20 requests each):\n  " + "\n  ".join(report))


def measure(client: httpx.Client, name: str, path: str, count: int = 20) -> str:
    """Server time (its ``Server-Timing`` header: data reads and template) and wall time."""
    server, wall = [], []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        wall.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (name, response.status_code)
        server.append(float(response.headers["server-timing"].split("dur=")[1]))
    return (
        f"{name:16} server median {statistics.median(server):5.1f} ms, max {max(server):5.1f} ms;"
        f" wall median {statistics.median(wall):5.1f} ms"
    )
