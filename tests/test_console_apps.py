"""The console's apps pages: the config form generated from an app's JSON Schema (pure
tests), and the pages against a real ``fleetcloud serve --demo`` with a real app deployed
and run by the real dispatcher — over HTTP and in a real Chromium."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from fleetcloud.console import configform
from tests.browser import LAPTOP, PHONE, Tab, open_tab
from tests.servers.fleetcloud import cli_json
from tests.test_apps_kit import deploy_body, probe_files
from tests.test_console import Demo, demo_server, measure, sign_in, wait_for

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["threshold"],
    "properties": {
        "label": {
            "title": "Label",
            "description": "Shown on the dashboard",
            "type": ["string", "null"],
            "pattern": "^[a-z-]+$",
            "default": "probe",
            "x-position": 1,
        },
        "threshold": {
            "title": "Alarm threshold",
            "type": "integer",
            "minimum": 0,
            "maximum": 100,
            "default": 50,
            "x-position": 0,
        },
        "mode": {"title": "Mode", "type": "string", "enum": ["eco", "boost"]},
        "enabled": {"title": "Enabled", "type": "boolean", "default": True},
        "ports": {"title": "Ports", "type": "array", "items": {"type": "integer"}},
        "limits": {
            "title": "Limits",
            "type": "object",
            "properties": {"low": {"title": "Low", "type": "number"}},
        },
        "secret_key": {"title": "Secret", "type": "string", "x-hidden": True},
        "dv_proc_subscriptions": {"type": ["array", "null"], "items": {"type": "string"}},
    },
}


# ---------------------------------------------------------------- the form, pure


def by_path(fields: list[configform.Field]) -> dict[tuple[str, ...], configform.Field]:
    return {f.path: f for f in configform.walk(fields)}


def test_the_form_follows_the_schema() -> None:
    fields = configform.fields(SCHEMA, {"threshold": 7, "ports": [80, 443], "secret_key": "s"})
    assert [f.path[-1] for f in fields] == [
        "threshold", "label", "mode", "enabled", "ports", "limits", "dv_proc_subscriptions",
    ]  # fmt: skip
    found = by_path(fields)
    threshold = found[("threshold",)]
    assert (threshold.kind, threshold.value, threshold.required) == ("integer", "7", True)
    assert threshold.attrs == {"min": "0", "max": "100", "step": "1"}
    label = found[("label",)]
    assert (label.kind, label.value, label.nullable) == ("text", "probe", True)  # its default
    assert label.description == "Shown on the dashboard"
    assert found[("mode",)].options == [('"eco"', "eco"), ('"boost"', "boost")]
    assert found[("enabled",)].value == "true"
    assert (found[("ports",)].kind, found[("ports",)].value) == ("list", "80\n443")
    assert found[("limits", "low")].kind == "number"
    assert found[("dv_proc_subscriptions",)].label == "Subscriptions (channel names)"
    assert ("secret_key",) not in found  # x-hidden
    assert found[("limits", "low")].name == "c/limits/low"


def test_a_submitted_form_becomes_a_config_keeping_what_it_does_not_show() -> None:
    current = {"threshold": 7, "secret_key": "s", "unknown": {"kept": True}, "mode": "eco"}
    form = {
        "c/threshold": ["12"],
        "c/label": [""],
        "c/mode": [""],
        "c/enabled": ["false"],  # the hidden input alone: the box was not ticked
        "c/ports": ["80\n\n 443 \n"],
        "c/limits/low": ["-1.5"],
        "c/dv_proc_subscriptions": ["sensors\nui_cmds"],
    }
    config, unreadable = configform.read(SCHEMA, form, current)
    assert unreadable == {}
    assert config == {
        "threshold": 12,
        "label": None,  # nullable: an empty field is null
        "enabled": False,
        "ports": [80, 443],
        "limits": {"low": -1.5},
        "dv_proc_subscriptions": ["sensors", "ui_cmds"],
        "secret_key": "s",
        "unknown": {"kept": True},
    }  # mode (not nullable, emptied) is left out
    assert configform.field_errors(SCHEMA, config) == {}


def test_problems_are_put_next_to_their_fields() -> None:
    form = {"c/threshold": ["500"], "c/label": ["Bad Label"], "c/ports": ["80\nabc"]}
    config, _ = configform.read(SCHEMA, form, {})
    errors = configform.field_errors(SCHEMA, config)
    fields = configform.fields(SCHEMA, {})
    assert configform.attach(fields, errors) == []
    found = by_path(fields)
    assert found[("threshold",)].error == "500 is greater than the maximum of 100"
    assert found[("label",)].error == "'Bad Label' does not match '^[a-z-]+$'"
    assert found[("ports",)].error == "line 2: 'abc' is not of type 'integer'"
    missing = configform.field_errors(SCHEMA, {})
    assert missing == {("threshold",): ["this is required"]}


def test_what_a_form_cannot_show_is_edited_as_json() -> None:
    schema = {"type": "object", "properties": {"rules": {"type": "array", "items": {}}}}
    [rules] = configform.fields(schema, {"rules": [{"a": 1}]})
    assert rules.kind == "json"
    config, unreadable = configform.read(schema, {rules.name: ['[{"a": 2}]']}, {})
    assert (config, unreadable) == ({"rules": [{"a": 2}]}, {})
    _, unreadable = configform.read(schema, {rules.name: ["[{"]}, {})
    assert unreadable[("rules",)].startswith("this is not valid JSON")


# ---------------------------------------------------------------- a server with an app


@dataclass
class Setup:
    demo: Demo
    app_id: str
    installation_id: str
    other_app_id: str  # another organisation's
    other_installation_id: str

    @property
    def installation_path(self) -> str:
        return f"/apps/installations/{self.installation_id}"

    def config(self) -> dict[str, Any]:
        found = self.demo.api("GET", f"/api/apps/installations/{self.installation_id}")
        config: dict[str, Any] = found["deployment_config"]
        return config


def deploy_and_install(demo: Demo, token: str, device: str) -> tuple[str, str]:
    body = deploy_body("probe", probe_files(), schema=SCHEMA)
    app = demo.api("POST", "/api/apps", token=token, json=body)
    config = {"threshold": 10, "secret_key": "keep-me"}
    installed = demo.api(
        "POST",
        f"/api/apps/{app['id']}/installations",
        token=token,
        json={"agent_id": device, "config": config},
    )
    return str(app["id"]), str(installed["id"])


def ran_once(demo: Demo, installation_id: str) -> None:
    log = demo.api("GET", f"/api/apps/installations/{installation_id}/invocations")
    assert log, "not invoked yet"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("console-apps")
    with demo_server(directory) as demo:
        database = f"sqlite:///{directory / 'console.sqlite'}"
        other = cli_json("org", "create", "Elsewhere", "--database", database, "--json")
        device = cli_json(
            "device", "create", "far-away", "--org", other["organisation_id"],
            "--database", database, "--json",
        )  # fmt: skip
        other_app, other_installation = deploy_and_install(demo, other["token"], device["agent_id"])
        app, installation = deploy_and_install(demo, demo.token, demo.devices["pump-station-1"])
        wait_for(lambda: ran_once(demo, installation), 60)  # on_deployment, by a real worker
        yield Setup(demo, app, installation, other_app, other_installation)


@contextlib.contextmanager
def signed_in(demo: Demo, token: str | None = None) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo.url, timeout=10) as client:
        answer = client.post(
            "/signin", data={"token": token or demo.token}, headers={"Origin": demo.url}
        )
        assert answer.status_code == 303, answer.text
        yield client


# ---------------------------------------------------------------- over HTTP


def test_another_organisations_apps_are_not_found(setup: Setup) -> None:
    demo = setup.demo
    with signed_in(demo) as client:
        listed = client.get("/apps")
        assert listed.status_code == 200
        assert setup.app_id in listed.text
        assert setup.other_app_id not in listed.text
        assert setup.other_installation_id not in listed.text
        installation = f"/apps/installations/{setup.other_installation_id}"
        for path in (f"/apps/{setup.other_app_id}", installation, installation + "/invocations"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert "does not exist" in answer.text
        origin = {"Origin": demo.url}
        saved = client.post(installation + "/config", data={"c/threshold": "1"}, headers=origin)
        assert saved.status_code == 404
        invoked = client.post(installation + "/invoke", data={"payload": ""}, headers=origin)
        assert invoked.status_code == 404


def test_apps_take_an_admin(setup: Setup) -> None:
    demo = setup.demo
    device = demo.api("POST", "/api/agents", json={"name": "apps-reader", "kind": "device"})
    token = device.get("token")
    assert isinstance(token, str), device
    with signed_in(demo, token) as client:
        for path in ("/apps", setup.installation_path):
            answer = client.get(path)
            assert answer.status_code == 403
            assert "Only an organisation admin may see and manage apps." in answer.text


def test_the_config_form_works_without_javascript(setup: Setup) -> None:
    demo = setup.demo
    path = setup.installation_path + "/config"
    with signed_in(demo) as client:
        refused = client.post(path, data={"c/threshold": "20"}, headers={"Origin": "http://x.y"})
        assert refused.status_code == 403
        bad = client.post(
            path, data={"c/threshold": "500", "c/label": "ok"}, headers={"Origin": demo.url}
        )
        assert bad.status_code == 422
        assert "The config was not saved." in bad.text
        assert "500 is greater than the maximum of 100" in bad.text
        assert 'value="500"' in bad.text  # what was typed comes back
        assert setup.config()["threshold"] == 10  # nothing saved
        good = client.post(
            path,
            data={"c/threshold": "20", "c/label": "pumps", "c/enabled": "false"},
            headers={"Origin": demo.url},
        )
        assert good.status_code == 303
        assert good.headers["location"].endswith("?saved=1#config")
    config = setup.config()
    assert (config["threshold"], config["label"], config["enabled"]) == (20, "pumps", False)
    assert config["secret_key"] == "keep-me"  # hidden from the form, kept


def test_an_organisation_without_apps_says_how_to_deploy_one(setup: Setup) -> None:
    database = f"sqlite:///{setup.demo.log.parent / 'console.sqlite'}"
    empty = cli_json("org", "create", "Empty Org", "--database", database, "--json")
    with signed_in(setup.demo, empty["token"]) as client:
        page = client.get("/apps")
    assert page.status_code == 200
    assert "No apps deployed yet" in page.text
    assert "fleetcloud app deploy" in page.text


# ---------------------------------------------------------------- in the browser
@pytest.mark.browser
def test_apps_and_installations_are_listed(tab: Tab, setup: Setup) -> None:
    page = tab.page
    sign_in(page, setup.demo)
    page.get_by_role("navigation", name="Sections").get_by_role("link", name="Apps").click()
    expect(page).to_have_url(re.compile(r"/apps$"))
    expect(page.locator(f"tr[data-app='{setup.app_id}']")).to_contain_text("Probe")
    row = page.locator(f"tr[data-installation='{setup.installation_id}']")
    expect(row).to_contain_text("pump-station-1")
    expect(row).to_contain_text("on_deployment")  # its first run, from the real dispatcher
    expect(page.get_by_text("far-away")).to_have_count(0)
    row.get_by_role("link", name="probe", exact=True).click()
    expect(page.locator("h1")).to_have_text("probe")
    expect(page.get_by_label("Alarm threshold")).to_be_visible()


@pytest.mark.browser
def test_an_invalid_config_is_refused_with_a_clear_message(tab: Tab, setup: Setup) -> None:
    tab.expected_statuses.add(422)  # the form, sent back with its problems
    page = tab.page
    sign_in(page, setup.demo)
    page.goto(setup.demo.url + setup.installation_path)
    before = setup.config()
    threshold = page.get_by_label("Alarm threshold")
    threshold.fill("500")  # checked in the browser: nothing is sent
    threshold.press("Enter")
    expect(threshold).to_have_attribute("aria-invalid", "true")
    expect(threshold).to_be_focused()
    field = page.locator("[data-field='c/threshold'] [data-field-error]")
    expect(field).to_contain_text("100")  # the browser's own words: at most 100
    expect(page.get_by_role("alert")).to_contain_text("The config was not saved.")
    assert setup.config() == before

    threshold.fill("30")  # the pattern is the server's to check (the schema's regex dialect)
    page.get_by_label("Label").fill("Not Valid!")
    page.get_by_role("button", name="Save config").click()
    label_error = page.locator("[data-field='c/label'] [data-field-error]")
    expect(label_error).to_have_text("'Not Valid!' does not match '^[a-z-]+$'")
    expect(page.get_by_label("Label")).to_have_value("Not Valid!")  # kept as typed
    expect(page.get_by_label("Alarm threshold")).to_have_value("30")
    assert setup.config() == before


@pytest.mark.browser
def test_saving_a_config_from_the_form(tab: Tab, setup: Setup) -> None:
    page = tab.page
    sign_in(page, setup.demo)
    page.goto(setup.demo.url + setup.installation_path)
    page.get_by_label("Alarm threshold").fill("42")
    page.get_by_label("Mode").select_option("boost")
    page.get_by_label("Ports").fill("8080\n8443")
    page.get_by_label("Low").fill("2.5")
    page.get_by_label("Label").fill("north")
    page.get_by_label("Label").press("Enter")  # keyboard submits
    expect(page.get_by_role("status").first).to_have_text("Config saved.")
    config = setup.config()
    assert config["threshold"] == 42
    assert config["mode"] == "boost"
    assert config["ports"] == [8080, 8443]
    assert config["limits"] == {"low": 2.5}
    assert config["secret_key"] == "keep-me"
    expect(page.get_by_label("Ports")).to_have_value("8080\n8443")


@pytest.mark.browser
def test_manual_invoke_adds_a_row_to_the_log(tab: Tab, setup: Setup) -> None:
    page = tab.page
    sign_in(page, setup.demo)
    page.goto(setup.demo.url + setup.installation_path)
    rows = page.locator("tr[data-invocation]")
    expect(rows.first).to_contain_text("on_deployment")
    page.evaluate("window.stayed = true")  # the row must come without a reload
    payload = page.get_by_label("Payload (JSON, optional)")
    payload.fill("{not json")
    page.get_by_role("button", name="Invoke now").click()
    expect(page.locator("#invoke-error")).to_contain_text("not valid JSON")
    payload.fill('{"do": "raise"}')
    page.get_by_role("button", name="Invoke now").click()
    expect(page.locator(".toast").last).to_contain_text("on_manual_invoke is queued")
    failed = rows.filter(has_text="on_manual_invoke").first
    expect(failed).to_contain_text("ERROR", timeout=60_000)
    expect(failed).to_contain_text("asked to fail")
    expect(failed).to_contain_text(re.compile(r"\d+\.\d ms"))
    payload.fill('{"note": "from the console"}')
    page.get_by_role("button", name="Invoke now").click()
    ok = rows.filter(has_text="on_manual_invoke").filter(has_text="OK")
    expect(ok.first).to_be_visible(timeout=60_000)
    assert page.evaluate("window.stayed") is True


@pytest.mark.browser
@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_apps_pages_fit_without_horizontal_scrolling(
    browser: Browser, setup: Setup, viewport: dict[str, int]
) -> None:
    tab = open_tab(browser, viewport)
    page = tab.page
    widths = {}
    try:
        sign_in(page, setup.demo)
        for path in ("/apps", f"/apps/{setup.app_id}", setup.installation_path):
            page.goto(setup.demo.url + path)
            page.wait_for_load_state("networkidle")
            widths[path] = page.evaluate("document.documentElement.scrollWidth")
    finally:
        page.context.close()
    assert widths == dict.fromkeys(widths, viewport["width"])
    assert tab.errors == []


def test_apps_render_times_are_measured(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a benchmark gate: prints each page's server time (docs/benchmarks.md)."""
    paths = {
        "apps": "/apps",
        "app": f"/apps/{setup.app_id}",
        "installation": setup.installation_path,
        "invocation rows": setup.installation_path + "/invocations",
    }
    with signed_in(setup.demo) as client:
        report = [measure(client, name, path) for name, path in paths.items()]
    with capsys.disabled():
        print("\nconsole apps render times (20 requests each):\n  " + "\n  ".join(report))
