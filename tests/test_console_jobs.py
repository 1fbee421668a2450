"""The console's jobs pages in a real Chromium, against a real ``fleetcloud serve --demo``
whose ``weather-mast`` runs a real fleetcloud agent: jobs are created through the form,
run by the agent, followed live, and canceled; bad input comes back with the jobs API's
own message. Every page a test opens must log no console error."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from fleetcloud.console.jobs import JobForm
from fleetcloud.core.errors import BadRequest
from fleetcloud.jobs.requests import parse_execute
from tests.browser import LAPTOP, PHONE, Tab, open_tab
from tests.servers.fleetcloud import cli_json
from tests.test_console import Demo, demo_server, measure, sign_in, wait_for

browser_test = pytest.mark.browser


@dataclass
class Fleet:
    demo: Demo
    database: str

    @property
    def url(self) -> str:
        return self.demo.url

    def job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.demo.api("GET", f"/api/v1/jobs/{job_id}")
        return found

    def jobs(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.demo.api("GET", "/api/v1/jobs")
        return found


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("console-jobs")
    with demo_server(directory) as running:
        yield Fleet(running, f"sqlite:///{directory / 'console.sqlite'}")


def device_box(page: Page, fleet: Fleet, name: str) -> Any:
    return page.locator(f"input[name='target_devices'][value='{fleet.demo.devices[name]}']")


def open_form(page: Page, fleet: Fleet) -> None:
    """The new-job form, once the demo agent is waiting for work (it starts with the
    server, a moment after the first page can load)."""

    def agent_waiting() -> None:
        page.goto(fleet.url + "/jobs/new")
        listening = page.locator("li", has=device_box(page, fleet, "weather-mast"))
        assert listening.locator("[data-listening]").count() == 1

    wait_for(agent_waiting, timeout=30)


def execution_row(page: Page, fleet: Fleet, device: str) -> Any:
    return page.locator(
        "tr[data-execution]", has=page.locator(f"a[href='/devices/{fleet.demo.devices[device]}']")
    )


# ---------------------------------------------------------------- the form, pure


def test_the_form_becomes_the_execute_body() -> None:
    fields = {
        "job_name": [" nightly check "],
        "template_id": ["run-command"],
        "param.run-command.command": ["echo,hi"],
        "param.health-check.unused": ["ignored: another template's"],
        "target_type": ["group"],
        "target_devices": ["1"],
        "target_groups": ["7", "8"],
        "timeout_seconds": ["90"],
        "maximum_per_minute": [""],
        "abort_failure_type": ["ALL"],
        "abort_threshold_percentage": ["12.5"],
        "abort_min_finished": [""],
        "retry_failure_type": ["TIMED_OUT"],
        "number_of_retries": ["2"],
    }
    body = JobForm.of(fields).body()
    assert body == {
        "job_name": "nightly check",
        "template_id": "run-command",
        "parameters": {"command": "echo,hi"},
        "target_type": "group",
        "target_groups": ["7", "8"],
        "timeout_seconds": 90,
        "abort_criteria": [
            {"failure_type": "ALL", "threshold_percentage": 12.5, "min_finished": 1}
        ],
        "retries": [{"failure_type": "TIMED_OUT", "number_of_retries": 2}],
    }
    request = parse_execute(body)
    assert request.targets == ("7", "8")
    assert request.abort_criteria[0].threshold_percentage == 12.5


def test_a_bad_value_reaches_the_api_parser_as_typed() -> None:
    form = JobForm.of({"job_name": ["x"], "target_type": ["all"], "timeout_seconds": ["1.5"]})
    with pytest.raises(BadRequest) as refused:
        parse_execute(form.body())
    form.blame(refused.value.message)
    assert form.problem == "timeout_seconds must be a whole number from 1 to 604800, not '1.5'"
    assert form.invalid == "timeout_seconds"
    form = JobForm.of({"template_id": ["reboot"], "param.reboot.delay_minutes": ["soon"]})
    form.blame("parameter 'delay_minutes' 'soon' does not match the parameter's pattern")
    assert form.invalid == "param-reboot-delay_minutes"


# ---------------------------------------------------------------- without JavaScript


def test_the_form_works_without_javascript_and_only_from_this_site(fleet: Fleet) -> None:
    weather = fleet.demo.devices["weather-mast"]
    fields = {
        "job_name": "from a plain form",
        "template_id": "run-command",
        "param.run-command.command": "echo,plain",
        "param.restart-service.service": "",  # every template's inputs are sent
        "target_type": "device",
        "target_devices": weather,
    }
    with httpx.Client(base_url=fleet.url, timeout=10) as client:
        origin = {"Origin": fleet.url}
        signed = client.post("/signin", data={"token": fleet.demo.token}, headers=origin)
        assert signed.status_code == 303
        before = len(fleet.jobs())
        refused = client.post("/jobs", data=fields, headers={"Origin": "http://evil.example"})
        assert refused.status_code == 403
        assert len(fleet.jobs()) == before
        created = client.post("/jobs", data=fields, headers=origin)
        assert created.status_code == 303
        job_id = created.headers["location"].rsplit("/", 1)[1]
        job = fleet.job(job_id)
        assert job["job_name"] == "from a plain form"
        assert job["parameters"] == {"command": "echo,plain"}
        assert job["targets"] == [weather]

        def succeeded() -> None:
            progress = client.get(f"/jobs/{job_id}/progress").json()
            assert progress["finished"], progress["job"]
            [execution] = progress["executions"]
            assert execution["status"] == "SUCCEEDED"
            assert execution["stdout"] == "plain\n"
            assert execution["device_name"] == "weather-mast"

        wait_for(succeeded, 30)
        canceled = client.post(f"/jobs/{job_id}/cancel", data={"force": "false"}, headers=origin)
        assert canceled.status_code == 409  # nothing left to cancel: a clear page
        assert "already COMPLETED" in canceled.text


# ---------------------------------------------------------------- running a job


@browser_test
def test_a_health_check_on_the_demo_agent_succeeds(tab: Tab, fleet: Fleet) -> None:
    page = tab.page
    sign_in(page, fleet.demo)
    page.get_by_role("link", name="Jobs").click()
    expect(page.locator("h1")).to_have_text("Jobs")
    page.get_by_role("link", name="New job").click()
    open_form(page, fleet)
    expect(page.locator("#template_id")).to_have_value("health-check")
    expect(page.locator("#job_name")).to_have_value(re.compile(r"^health-check \d{4}-\d\d-\d\d"))
    expect(device_box(page, fleet, "weather-mast")).to_be_checked()  # the agent's device
    expect(device_box(page, fleet, "pump-station-1")).not_to_be_checked()
    expect(page.get_by_text("secret-device")).to_have_count(0)  # another organisation's

    page.get_by_role("button", name="Run job").focus()  # by keyboard
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    job_id = page.url.rsplit("/", 1)[1]
    row = execution_row(page, fleet, "weather-mast")
    expect(row.locator("[data-status]")).to_have_text("Succeeded")
    expect(page.locator("[data-job-status]")).to_have_text("Completed")
    expect(row.locator("[data-exit-code]")).to_have_text("0")
    expect(page.locator("[data-count='SUCCEEDED'] .n")).to_have_text("1")
    stdout = row.locator("details[data-stream='stdout']")
    stdout.locator("summary").click()
    expect(stdout.locator("pre")).to_contain_text("load average")  # uptime
    expect(stdout.locator("pre")).to_contain_text("Filesystem")  # df -h
    assert fleet.job(job_id)["counts"]["SUCCEEDED"] == 1
    page.goto(fleet.url + "/jobs")
    listed = page.locator(f"tr[data-job='{job_id}']")
    expect(listed).to_contain_text("Completed")
    expect(listed).to_contain_text("succeeded 1")


@browser_test
def test_progress_and_output_arrive_without_a_reload(tab: Tab, fleet: Fleet) -> None:
    page = tab.page
    sign_in(page, fleet.demo)
    open_form(page, fleet)
    page.select_option("#template_id", "run-command")  # its parameter appears, named after it
    expect(page.locator("#job_name")).to_have_value(re.compile(r"^run-command "))
    command = page.get_by_label("command")
    expect(command).to_be_visible()
    expect(page.locator("fieldset[data-template='health-check']")).to_be_hidden()
    command.fill("sh,-c,sleep 3; echo done by the agent; echo a warning >&2")
    page.get_by_role("button", name="Run job").click()
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    row = execution_row(page, fleet, "weather-mast")
    expect(row.locator("[data-status]")).to_have_text(re.compile("Queued|In Progress"))
    page.evaluate("document.body.dataset.sameDocument = 'yes'")  # gone after a reload
    expect(row.locator("[data-status]")).to_have_text("Succeeded", timeout=20_000)
    expect(page.locator("[data-count='IN_PROGRESS'] .n")).to_have_text("0")
    expect(page.locator("[data-count='SUCCEEDED'] .n")).to_have_text("1")
    expect(row.locator("details[data-stream='stdout'] pre")).to_contain_text("done by the agent")
    expect(row.locator("details[data-stream='stderr'] pre")).to_contain_text("a warning")
    expect(page.locator("[data-live-note]")).to_have_text("(finished)")
    expect(page.locator("[data-cancel]")).to_be_hidden()  # nothing left to cancel
    assert page.evaluate("document.body.dataset.sameDocument") == "yes"


@browser_test
def test_cancel_a_job_that_waits_for_an_agent(tab: Tab, fleet: Fleet) -> None:
    page = tab.page
    sign_in(page, fleet.demo)
    open_form(page, fleet)
    page.fill("#job_name", "check the cold chain")
    page.get_by_label("Groups").check()
    expect(device_box(page, fleet, "weather-mast")).to_be_hidden()
    page.get_by_label("cold-chain").check()
    page.get_by_role("button", name="Run job").click()
    expect(page.locator("h1")).to_have_text("check the cold chain")
    row = execution_row(page, fleet, "cold-room-3")  # no agent there: it stays queued
    expect(row.locator("[data-status]")).to_have_text("Queued")
    expect(row.locator("[data-reason]")).to_contain_text("waiting for the device's agent")
    page.fill("#reason", "wrong group")
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("[data-job-status]")).to_have_text("Canceled")
    expect(page.locator("[data-job-reason]")).to_have_text("wrong group")
    expect(row.locator("[data-status]")).to_have_text("Canceled")
    expect(page.locator("[data-cancel]")).to_be_hidden()
    job_id = page.url.rsplit("/", 1)[1]
    assert fleet.job(job_id)["status"] == "CANCELED"
    assert fleet.job(job_id)["counts"]["CANCELED"] == 1


@browser_test
def test_the_list_follows_jobs_in_progress(tab: Tab, fleet: Fleet) -> None:
    body = {"job_name": "waits for cold-chain", "template_id": "health-check"}
    body |= {"target_type": "group", "target_groups": ["cold-chain"]}
    job = fleet.demo.api("POST", "/api/v1/jobs/execute", json=body)
    page = tab.page
    sign_in(page, fleet.demo)
    page.goto(fleet.url + "/jobs")
    row = page.locator(f"tr[data-job='{job['job_id']}']")
    expect(row.locator("[data-job-status]")).to_have_text("In Progress")
    expect(row.locator("[data-job-counts]")).to_contain_text("queued 1")
    page.evaluate("document.body.dataset.sameDocument = 'yes'")
    fleet.demo.api("POST", f"/api/v1/jobs/{job['job_id']}/cancel", json={"reason": "by the API"})
    expect(row.locator("[data-job-status]")).to_have_text("Canceled")  # without a reload
    expect(row.locator("[data-job-counts]")).to_contain_text("canceled 1")
    assert page.evaluate("document.body.dataset.sameDocument") == "yes"


# ---------------------------------------------------------------- bad input


@browser_test
@pytest.mark.parametrize(
    ("fill", "message", "field"),
    [
        (
            {
                "#template_id": "restart-service",
                "#param-restart-service-service": "nginx; rm -rf /",
            },
            "The job was not created: parameter 'service' 'nginx; rm -rf /' does not match "
            "the parameter's pattern '[A-Za-z0-9@._:-]{1,128}'",
            "#param-restart-service-service",
        ),
        (
            {"#template_id": "run-command"},
            "The job was not created: parameter 'command' is required: comma-separated argv, "
            "e.g. docker,restart,redis",
            "#param-run-command-command",
        ),
        (
            {"#timeout_seconds": "soon"},
            "The job was not created: timeout_seconds must be a whole number from 1 to "
            "604800, not 'soon'",
            "#timeout_seconds",
        ),
        (
            {"uncheck": "weather-mast"},
            "The job was not created: target_devices must be a non-empty list for "
            "target_type device",
            "#targets",
        ),
    ],
    ids=["parameter-pattern", "parameter-missing", "timeout", "no-device"],
)
def test_a_bad_job_form_shows_the_apis_message(
    tab: Tab, fleet: Fleet, fill: dict[str, str], message: str, field: str
) -> None:
    tab.expected_statuses.add(400)
    page = tab.page
    sign_in(page, fleet.demo)
    before = len(fleet.jobs())
    open_form(page, fleet)
    for selector, value in fill.items():
        if selector == "uncheck":
            device_box(page, fleet, value).uncheck()
        elif selector == "#template_id":
            page.select_option(selector, value)
        else:
            if selector == "#timeout_seconds":
                page.locator("details.more summary").click()
            page.fill(selector, value)
    with page.expect_response(lambda r: r.url.endswith("/jobs")) as answer:
        page.get_by_role("button", name="Run job").click()
    assert answer.value.status == 400
    expect(page.get_by_role("alert")).to_have_text(message)
    expect(page.locator(field)).to_have_attribute("aria-invalid", "true")
    for selector, value in fill.items():  # what was typed is kept
        if selector.startswith("#"):
            expect(page.locator(selector)).to_have_value(value)
    assert len(fleet.jobs()) == before  # nothing was created


@browser_test
def test_another_organisation_is_invisible(tab: Tab, fleet: Fleet) -> None:
    tab.expected_statuses.update({403, 404})
    rival = cli_json("org", "create", "Rival Farms", "--database", fleet.database, "--json")
    cli_json(
        "device", "create", "rival-pump", "--org", rival["organisation_id"],
        "--database", fleet.database, "--json",
    )  # fmt: skip
    body = {"job_name": "rival job", "template_id": "health-check", "target_type": "all"}
    headers = {"Authorization": f"Bearer {rival['token']}"}
    created = httpx.post(fleet.url + "/api/v1/jobs/execute", json=body, headers=headers)
    created.raise_for_status()
    rival_job = created.json()["job_id"]

    page = tab.page
    sign_in(page, fleet.demo)
    page.goto(fleet.url + "/jobs")
    expect(page.get_by_text("rival job")).to_have_count(0)
    page.goto(fleet.url + "/jobs/new")
    expect(page.get_by_text("rival-pump")).to_have_count(0)
    for path in ("", "/progress"):
        response = page.goto(f"{fleet.url}/jobs/{rival_job}{path}")
        assert response is not None
        assert response.status == 404, path
    page.goto(f"{fleet.url}/jobs/{rival_job}")
    expect(page.get_by_role("alert")).to_have_text(f"job {rival_job} does not exist")
    refused = page.request.post(
        f"{fleet.url}/jobs/{rival_job}/cancel",
        headers={"Origin": fleet.url},
        form={"force": "true"},
    )
    assert refused.status == 404
    assert httpx.get(f"{fleet.url}/api/v1/jobs/{rival_job}", headers=headers).json()["status"] == (
        "IN_PROGRESS"
    )
    page.click("button:has-text('Sign out')")
    ours = fleet.demo.api("GET", "/api/v1/devices")[0]["organisation_id"]
    reader = cli_json(
        "device", "create", "demo-reader", "--org", ours, "--database", fleet.database, "--json"
    )
    page.goto(fleet.url + "/signin")
    page.fill("#token", reader["token"])
    page.press("#token", "Enter")
    page.goto(fleet.url + "/jobs")
    expect(page.get_by_role("alert")).to_have_text(
        "Only an organisation admin (operator) may see and run jobs."
    )


# ---------------------------------------------------------------- manners


@browser_test
@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_jobs_pages_fit_without_horizontal_scrolling(
    browser: Browser, fleet: Fleet, viewport: dict[str, int]
) -> None:
    tab = open_tab(browser, viewport)
    page = tab.page
    widths = {}
    try:
        sign_in(page, fleet.demo)
        page.goto(fleet.url + "/jobs/new")
        widths["new"] = page.evaluate("document.documentElement.scrollWidth")
        page.locator("details.more summary").click()
        widths["new, all settings"] = page.evaluate("document.documentElement.scrollWidth")
        page.get_by_role("button", name="Run job").click()
        expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
        expect(page.locator("[data-live-note]")).to_have_text("(finished)", timeout=20_000)
        widths["job"] = page.evaluate("document.documentElement.scrollWidth")
        page.goto(fleet.url + "/jobs")
        widths["list"] = page.evaluate("document.documentElement.scrollWidth")
    finally:
        page.context.close()
    assert widths == dict.fromkeys(widths, viewport["width"])
    assert tab.errors == []


@browser_test
def test_jobs_render_times_are_measured(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a benchmark gate: prints each page's server time for docs/benchmarks.md."""
    jobs = fleet.jobs()
    assert jobs, "the tests above ran jobs"
    with httpx.Client(base_url=fleet.url, timeout=10) as client:
        signed = client.post(
            "/signin", data={"token": fleet.demo.token}, headers={"Origin": fleet.url}
        )
        assert signed.status_code == 303
        report = [
            measure(client, "jobs", "/jobs"),
            measure(client, "new job", "/jobs/new"),
            measure(client, "job", f"/jobs/{jobs[0]['job_id']}"),
            measure(client, "job progress", f"/jobs/{jobs[0]['job_id']}/progress"),
        ]
    with capsys.disabled():
        print("\njobs pages render times (20 requests each):\n  " + "\n  ".join(report))
