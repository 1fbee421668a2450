"""The jobs API in-process, on SQLite and PostgreSQL: what an operator and a device see."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from fleetcloud.core.types import AgentKind, Principal, Role
from fleetcloud.jobs.requests import parse_execute
from fleetcloud.jobs.service import JobsService, jobs_service, running
from fleetcloud.platform import Platform
from fleetcloud.settings import Settings
from tests.conftest import Tenant, make_tenant

V1 = "/api/v1"
DOC = {
    "version": "1.0",
    "includeStdOut": True,
    "steps": [{"action": {"name": "hello", "type": "runCommand", "input": {"command": "echo,hi"}}}],
}
START_MS = 1_900_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


@pytest.fixture
def clock(platform: Platform) -> FakeClock:
    fake = FakeClock()
    jobs_service(platform).clock = fake
    return fake


@pytest.fixture
def service(platform: Platform, clock: FakeClock) -> JobsService:
    return jobs_service(platform)


def key(token: str) -> dict[str, str]:
    return {"X-Device-API-Key": token}


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    for word in words:
        assert word in body["message"], body["message"]


async def execute(api: httpx.AsyncClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "job_name": "say hi",
        "job_document": DOC,
        "target_type": "device",
        "target_devices": [str(tenant.device_id)],
        **body,
    }
    if "template_id" in body:
        payload.pop("job_document")
    job: dict[str, Any] = ok(
        await api.post(f"{V1}/jobs/execute", json=payload, headers=tenant.headers()), 201
    )
    return job


async def poll(
    api: httpx.AsyncClient, device_id: int, token: str, wait: float | None = None
) -> dict[str, Any]:
    params = {} if wait is None else {"wait": str(wait)}
    answer: dict[str, Any] = ok(
        await api.get(f"{V1}/devices/{device_id}/jobs/next", params=params, headers=key(token))
    )
    return answer


async def report(
    api: httpx.AsyncClient, device_id: int, token: str, job_id: str, **body: Any
) -> httpx.Response:
    return await api.patch(
        f"{V1}/devices/{device_id}/jobs/{job_id}/status", json=body, headers=key(token)
    )


async def job_of(api: httpx.AsyncClient, tenant: Tenant, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = ok(await api.get(f"{V1}/jobs/{job_id}", headers=tenant.headers()))
    return job


async def execution_of(
    api: httpx.AsyncClient, tenant: Tenant, device_id: int, job_id: str
) -> dict[str, Any]:
    found: dict[str, Any] = ok(
        await api.get(f"{V1}/devices/{device_id}/jobs/{job_id}", headers=tenant.headers())
    )
    return found


async def add_devices(platform: Platform, tenant: Tenant, count: int) -> list[tuple[int, str]]:
    made = []
    for index in range(count):
        agent = await platform.store.create_agent(
            tenant.organisation.id, AgentKind.DEVICE, f"extra-{index}"
        )
        token = await platform.store.create_token(
            Principal(agent.id, tenant.organisation.id, Role.DEVICE)
        )
        made.append((agent.id, token))
    return made


NO_JOBS = {"message": "No pending jobs"}


# ---------------------------------------------------------------- devices


async def test_a_device_registers_with_a_provisioning_key(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    created = ok(
        await api.post(
            f"{V1}/provisioning-keys", json={"label": "factory"}, headers=tenant.headers()
        ),
        201,
    )
    secret = created["provisioning_key"]
    assert created["label"] == "factory"
    listed = ok(await api.get(f"{V1}/provisioning-keys", headers=tenant.headers()))
    assert [k["id"] for k in listed] == [created["id"]]
    assert secret not in str(listed)  # stored hashed, shown once

    device = ok(
        await api.post(f"{V1}/device/register", json={"provisioning_key": secret, "name": "pi-7"}),
        201,
    )
    assert device["uuid"] == device["agent_id"]
    assert device["name"] == "pi-7"
    assert device["organisation_id"] == str(tenant.organisation.id)
    uuid, api_key = device["uuid"], device["api_key"]

    # One credential: the jobs API key is also the data API bearer token.
    assert await poll(api, int(uuid), api_key) == NO_JOBS
    published = await api.post(
        f"/api/agents/{uuid}/channels/status/messages",
        json={"data": {"booted": True}},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    ok(published)
    devices = ok(await api.get(f"{V1}/devices", headers=tenant.headers()))
    assert {"uuid": uuid, "name": "pi-7"}.items() <= next(
        d for d in devices if d["uuid"] == uuid
    ).items()
    assert {d["uuid"] for d in devices} >= {str(tenant.device_id), str(tenant.other_device_id)}
    assert ok(await api.get(f"{V1}/provisioning-keys", headers=tenant.headers()))[0]["uses"] == 1


async def test_registration_refuses_bad_keys(api: httpx.AsyncClient, tenant: Tenant) -> None:
    register = f"{V1}/device/register"
    refused(await api.post(register, json={"provisioning_key": "fcp_nope"}), 401, "not valid")
    refused(await api.post(register, json={"name": "x"}), 400, "provisioning_key")
    refused(await api.post(register, json={"provisioning_key": 5}), 400, "provisioning_key")
    refused(await api.post(register, json={"provisioning_key": tenant.admin_token}), 401)
    once = ok(
        await api.post(f"{V1}/provisioning-keys", json={"max_uses": 1}, headers=tenant.headers()),
        201,
    )
    ok(await api.post(register, json={"provisioning_key": once["provisioning_key"]}), 201)
    refused(
        await api.post(register, json={"provisioning_key": once["provisioning_key"]}),
        401,
        "used up",
    )
    revoked = ok(await api.post(f"{V1}/provisioning-keys", headers=tenant.headers()), 201)
    deleted = await api.delete(f"{V1}/provisioning-keys/{revoked['id']}", headers=tenant.headers())
    assert deleted.status_code == 204
    refused(await api.post(register, json={"provisioning_key": revoked["provisioning_key"]}), 401)
    refused(
        await api.post(f"{V1}/provisioning-keys", headers=key(tenant.device_token)), 403, "admin"
    )
    refused(
        await api.post(
            f"{V1}/provisioning-keys", json={"expires_in_seconds": -1}, headers=tenant.headers()
        ),
        400,
        "expires_in_seconds",
    )


async def test_groups_hold_devices_and_a_device_can_be_in_several(
    api: httpx.AsyncClient, tenant: Tenant
) -> None:
    a, b = str(tenant.device_id), str(tenant.other_device_id)
    h = tenant.headers()
    north = ok(
        await api.post(f"{V1}/groups", json={"name": "north", "devices": [a]}, headers=h), 201
    )
    edge = ok(await api.post(f"{V1}/groups", json={"name": "edge"}, headers=h), 201)
    assert north["devices"] == [a]
    assert edge["devices"] == []
    edge = ok(await api.post(f"{V1}/groups/edge/devices", json={"devices": [a, b]}, headers=h))
    assert sorted(edge["devices"]) == sorted([a, b])
    device = ok(await api.get(f"{V1}/devices/{a}", headers=h))
    assert sorted(device["groups"]) == sorted([north["id"], edge["id"]])
    in_north = ok(await api.get(f"{V1}/devices", params={"group": "north"}, headers=h))
    assert [d["uuid"] for d in in_north] == [a]
    listed = ok(await api.get(f"{V1}/groups", headers=h))
    assert [(g["name"], g["device_count"]) for g in listed] == [("edge", 2), ("north", 1)]
    edge = ok(await api.delete(f"{V1}/groups/{edge['id']}/devices/{a}", headers=h))
    assert edge["devices"] == [b]
    refused(await api.delete(f"{V1}/groups/edge/devices/{a}", headers=h), 404, "not in group")
    refused(await api.post(f"{V1}/groups", json={"name": "north"}, headers=h), 409, "exists")
    refused(
        await api.post(f"{V1}/groups", json={"name": "x", "devices": ["123"]}, headers=h),
        404,
        "device 123",
    )
    refused(await api.post(f"{V1}/groups", json={"name": "42"}, headers=h), 400, "digits")
    assert (await api.delete(f"{V1}/groups/north", headers=h)).status_code == 204
    refused(await api.get(f"{V1}/groups/north", headers=h), 404)
    refused(await api.get(f"{V1}/groups", headers=key(tenant.device_token)), 403)


# ---------------------------------------------------------------- templates


async def test_builtin_templates_and_crud(api: httpx.AsyncClient, tenant: Tenant) -> None:
    h = tenant.headers()
    listed = ok(await api.get(f"{V1}/jobs/templates", headers=h))
    assert [(t["id"], t["name"], t["builtin"]) for t in listed] == [
        ("1", "run-command", True),
        ("2", "restart-service", True),
        ("3", "health-check", True),
        ("4", "reboot", True),
    ]
    mine = {
        "name": "rotate-logs",
        "description": "logrotate one config",
        "job_document": {
            "version": "1.0",
            "steps": [
                {
                    "action": {
                        "type": "runCommand",
                        "input": {"command": "logrotate,-f,${aws:iot:parameter:config}"},
                    }
                }
            ],
        },
        "parameters": [{"key": "config", "regex": "/etc/[a-z./]+"}],
        "timeout_seconds": 90,
    }
    created = ok(await api.post(f"{V1}/jobs/templates", json=mine, headers=h), 201)
    assert created["builtin"] is False
    assert created["timeout_seconds"] == 90
    tid = created["id"]
    assert ok(await api.get(f"{V1}/jobs/templates/{tid}", headers=h))["name"] == "rotate-logs"
    assert ok(await api.get(f"{V1}/jobs/templates/rotate-logs", headers=h))["id"] == tid
    changed = ok(
        await api.put(f"{V1}/jobs/templates/{tid}", json={**mine, "timeout_seconds": 30}, headers=h)
    )
    assert changed["timeout_seconds"] == 30

    job = await execute(api, tenant, template_id=tid, parameters={"config": "/etc/logrotate.conf"})
    assert job["template_id"] == tid
    assert job["timeout_seconds"] == 30
    command = job["job_document"]["steps"][0]["action"]["input"]["command"]
    assert command == "logrotate,-f,/etc/logrotate.conf"

    refused(await api.put(f"{V1}/jobs/templates/3", json=mine, headers=h), 403, "built-in")
    refused(await api.delete(f"{V1}/jobs/templates/3", headers=h), 403, "built-in")
    refused(
        await api.post(f"{V1}/jobs/templates", json={**mine, "name": "reboot"}, headers=h),
        409,
        "built-in",
    )
    refused(await api.post(f"{V1}/jobs/templates", json=mine, headers=h), 409, "already exists")
    refused(
        await api.post(
            f"{V1}/jobs/templates", json={**mine, "name": "x", "parameters": []}, headers=h
        ),
        400,
        "'config', which parameters does not declare",
    )
    broken = {**mine, "name": "y", "job_document": {"version": "1.0", "steps": []}}
    refused(await api.post(f"{V1}/jobs/templates", json=broken, headers=h), 400, "steps")
    assert (await api.delete(f"{V1}/jobs/templates/{tid}", headers=h)).status_code == 204
    refused(await api.get(f"{V1}/jobs/templates/{tid}", headers=h), 404)
    refused(await api.get(f"{V1}/jobs/templates", headers=key(tenant.device_token)), 403)


# ---------------------------------------------------------------- the execution flow


async def test_a_device_runs_a_templated_job_and_reports(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    job = await execute(api, tenant, job_name="Test Health Check", template_id=3)
    assert job["status"] == "IN_PROGRESS"
    assert job["counts"]["QUEUED"] == 1
    assert job["counts"]["total"] == 1
    assert job["timeout_seconds"] == 60  # the template's

    assert await poll(api, tenant.other_device_id, tenant.other_device_token) == NO_JOBS
    got = await poll(api, tenant.device_id, tenant.device_token)
    assert got["job_id"] == job["job_id"]
    assert got["job_name"] == "Test Health Check"
    assert got["timeout_seconds"] == 60
    assert [s["action"]["name"] for s in got["job_document"]["steps"]] == [
        "uptime",
        "disk",
        "memory",
    ]
    assert got["status"] == "IN_PROGRESS"
    assert got["version"] == 2
    assert got["deadline_at"] == START_MS + 60_000

    progress = ok(
        await report(
            api,
            tenant.device_id,
            tenant.device_token,
            job["job_id"],
            status="IN_PROGRESS",
            status_details={"step": "disk"},
            expected_version=2,
        )
    )
    assert progress["version"] == 3
    assert progress["status_details"] == {"step": "disk"}
    done = ok(
        await report(
            api,
            tenant.device_id,
            tenant.device_token,
            job["job_id"],
            status="SUCCEEDED",
            exit_code=0,
            stdout="up 3 days",
            stderr="",
        )
    )
    assert (done["status"], done["exit_code"], done["stdout"], done["version"]) == (
        "SUCCEEDED",
        0,
        "up 3 days",
        4,
    )
    rolled = await job_of(api, tenant, job["job_id"])
    assert rolled["status"] == "COMPLETED"
    assert rolled["counts"]["SUCCEEDED"] == 1
    assert rolled["counts"]["QUEUED"] == 0
    assert rolled["completed_at"] == START_MS

    history = ok(
        await api.get(f"{V1}/devices/{tenant.device_id}/jobs", headers=key(tenant.device_token))
    )
    assert [(e["job_id"], e["status"]) for e in history] == [(job["job_id"], "SUCCEEDED")]
    # Every change was also published to the device's jobs channel, live.
    aggregate = ok(
        await api.get(
            f"/api/agents/{tenant.device_id}/channels/jobs/aggregate", headers=tenant.headers()
        )
    )
    assert aggregate["data"]["status"] == "SUCCEEDED"
    assert aggregate["data"]["version"] == 4
    messages = ok(
        await api.get(
            f"/api/agents/{tenant.device_id}/channels/jobs/messages", headers=tenant.headers()
        )
    )
    assert [m["data"]["status"] for m in reversed(messages)] == [
        "QUEUED",
        "IN_PROGRESS",
        "IN_PROGRESS",
        "SUCCEEDED",
    ]


async def test_targets_a_group_and_all_devices(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    a, b = tenant.device_id, tenant.other_device_id
    ok(
        await api.post(
            f"{V1}/groups", json={"name": "pumps", "devices": [str(b)]}, headers=tenant.headers()
        ),
        201,
    )
    grouped = await execute(
        api, tenant, target_type="group", target_devices=None, target_groups=["pumps"]
    )
    assert grouped["counts"]["QUEUED"] == 1
    assert grouped["targets"] == ["pumps"]
    assert await poll(api, a, tenant.device_token) == NO_JOBS
    assert (await poll(api, b, tenant.other_device_token))["job_id"] == grouped["job_id"]

    everyone = await execute(api, tenant, target_type="all", target_devices=None)
    assert everyone["counts"]["QUEUED"] == 2
    assert (await poll(api, a, tenant.device_token))["job_id"] == everyone["job_id"]
    # b is still busy with the group's job: one execution at a time.
    assert await poll(api, b, tenant.other_device_token) == NO_JOBS
    ok(await report(api, b, tenant.other_device_token, grouped["job_id"], status="FAILED"))
    assert (await poll(api, b, tenant.other_device_token))["job_id"] == everyone["job_id"]


async def test_one_execution_at_a_time_in_queue_order(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    first = await execute(api, tenant, job_name="first")
    second = await execute(api, tenant, job_name="second")
    got = await poll(api, tenant.device_id, tenant.device_token)
    assert got["job_id"] == first["job_id"]
    assert await poll(api, tenant.device_id, tenant.device_token) == NO_JOBS
    ok(
        await report(
            api, tenant.device_id, tenant.device_token, first["job_id"], status="SUCCEEDED"
        )
    )
    assert (await poll(api, tenant.device_id, tenant.device_token))["job_id"] == second["job_id"]
    # Starting a queued one by PATCH is refused while another runs.
    third = await execute(api, tenant, job_name="third")
    refused(
        await report(
            api, tenant.device_id, tenant.device_token, third["job_id"], status="IN_PROGRESS"
        ),
        409,
        "already running",
    )


async def test_concurrent_polls_start_the_execution_once(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    job = await execute(api, tenant)
    answers = await asyncio.gather(
        *(poll(api, tenant.device_id, tenant.device_token) for _ in range(20))
    )
    winners = [a for a in answers if "job_id" in a]
    assert len(winners) == 1
    assert [a for a in answers if "job_id" not in a] == [NO_JOBS] * 19
    execution = await execution_of(api, tenant, tenant.device_id, job["job_id"])
    assert (execution["status"], execution["version"]) == ("IN_PROGRESS", 2)


async def test_polls_woken_together_each_device_starts_its_execution_once(
    api: httpx.AsyncClient, platform: Platform, tenant: Tenant, service: JobsService
) -> None:
    """A job for many devices wakes their parked polls together, and they claim together
    in one unit of work: every device gets its execution, and a device polling twice at
    once gets it on one of the two polls only."""
    fleet = await add_devices(platform, tenant, 12)
    polls = [
        asyncio.create_task(poll(api, device_id, token, wait=3))
        for device_id, token in fleet
        for _ in range(2)
    ]
    while len(service.waiters) < len(polls):  # noqa: ASYNC110 - until every poll is parked
        await asyncio.sleep(0.01)
    job = await execute(api, tenant, target_devices=[str(d) for d, _ in fleet])
    answers = await asyncio.gather(*polls)
    for index in range(len(fleet)):
        pair = answers[2 * index : 2 * index + 2]
        assert sorted("job_id" in answer for answer in pair) == [False, True], pair
        assert NO_JOBS in pair
    started = [a for a in answers if "job_id" in a]
    assert {a["job_id"] for a in started} == {job["job_id"]}
    counts = (await job_of(api, tenant, job["job_id"]))["counts"]
    assert (counts["IN_PROGRESS"], counts["QUEUED"]) == (len(fleet), 0)


async def test_two_server_processes_polling_one_device_start_one_execution(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService, database_url: str
) -> None:
    """Two platforms on one database stand for two `fleetcloud serve` processes: each
    has its own writer, so their claims really race in the database."""
    await execute(api, tenant, job_name="first")
    await execute(api, tenant, job_name="second")
    settings = Settings(database_url=database_url, bus_url="memory")
    async with Platform.from_settings(settings) as second_process:
        other = JobsService(second_process.store)
        results = await asyncio.gather(
            *(each.next_job(tenant.device_id) for each in [service, other] * 10)
        )
    started = [found for found in results if found is not None]
    assert len(started) == 1
    running = ok(
        await api.get(
            f"{V1}/jobs/executions",
            params={"device": str(tenant.device_id), "status": "IN_PROGRESS"},
            headers=tenant.headers(),
        )
    )
    assert [e["execution_id"] for e in running] == [str(started[0][0].id)]


async def test_long_poll_answers_as_soon_as_a_job_is_queued(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    started = time.monotonic()  # no background loop runs: only the in-process wake-up
    waiting = asyncio.create_task(poll(api, tenant.device_id, tenant.device_token, wait=30))
    while len(service.waiters) == 0:  # noqa: ASYNC110 - until the poll is parked
        await asyncio.sleep(0.01)
    job = await execute(api, tenant)
    got = await waiting
    assert got["job_id"] == job["job_id"]
    assert time.monotonic() - started < 15  # not at the end of its 30 s wait


async def test_a_job_queued_by_another_process_wakes_the_long_poll(
    api: httpx.AsyncClient,
    platform: Platform,
    tenant: Tenant,
    service: JobsService,
    database_url: str,
) -> None:
    """A second platform on the same database stands for another server process: the
    job it queues reaches this process's parked poll through the background sweep."""
    settings = Settings(database_url=database_url, bus_url="memory")
    async with running(platform), Platform.from_settings(settings) as second:
        waiting = asyncio.create_task(poll(api, tenant.device_id, tenant.device_token, wait=60))
        while len(service.waiters) == 0:  # noqa: ASYNC110 - until the poll is parked
            await asyncio.sleep(0.01)
        other = JobsService(second.store)
        admin = Principal(tenant.organisation.agent_id, tenant.organisation.id, Role.ADMIN)
        request = parse_execute(
            {
                "job_name": "from elsewhere",
                "job_document": DOC,
                "target_type": "device",
                "target_devices": [str(tenant.device_id)],
            }
        )
        job = await other.execute(admin, request)
        assert len(other.waiters) == 0  # nobody waits in the second process to wake
        got = await asyncio.wait_for(waiting, 30)  # well before the 60 s wait ends
    assert (got["job_id"], got["status"]) == (str(job.id), "IN_PROGRESS")


async def test_long_poll_without_work_answers_no_pending_jobs(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    assert await poll(api, tenant.device_id, tenant.device_token, wait=0.2) == NO_JOBS
    refused(
        await api.get(
            f"{V1}/devices/{tenant.device_id}/jobs/next",
            params={"wait": "soon"},
            headers=key(tenant.device_token),
        ),
        400,
        "wait must be a number",
    )


# ---------------------------------------------------------------- status rules


async def test_illegal_updates_are_refused(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    job = await execute(api, tenant)
    d, t, j = tenant.device_id, tenant.device_token, job["job_id"]
    refused(await report(api, d, t, j, status="CANCELED"), 403, "a device may set only")
    refused(await report(api, d, t, j, status="TIMED_OUT"), 403, "a device may set only")
    refused(await report(api, d, t, j, status="QUEUED"), 403, "a device may set only")
    refused(await report(api, d, t, j, status="DONE"), 400, "not an execution status")
    await poll(api, d, t)
    refused(await report(api, d, t, j, status="SUCCEEDED", expected_version=1), 409, "version 2")
    ok(await report(api, d, t, j, status="SUCCEEDED", exit_code=0))
    for later in ("IN_PROGRESS", "FAILED", "REJECTED"):
        refused(await report(api, d, t, j, status=later), 409, "already SUCCEEDED", "final")
    # The same final status again (a retried request) is accepted and changes nothing.
    again = ok(await report(api, d, t, j, status="SUCCEEDED", exit_code=0))
    assert (again["status"], again["version"]) == ("SUCCEEDED", 3)
    refused(await report(api, d, t, "1234", status="SUCCEEDED"), 404, "no execution for device")


async def test_a_device_cannot_touch_another_devices_execution(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    job = await execute(api, tenant)
    a, b_token = tenant.device_id, tenant.other_device_token
    refused(await report(api, a, b_token, job["job_id"], status="FAILED"), 404, f"device {a}")
    refused(await report(api, tenant.other_device_id, b_token, job["job_id"], status="FAILED"), 404)
    refused(await api.get(f"{V1}/devices/{a}/jobs", headers=key(b_token)), 404)
    refused(await api.get(f"{V1}/devices/{a}/jobs/next", headers=key(b_token)), 404)
    refused(await api.get(f"{V1}/devices/{a}/jobs/{job['job_id']}", headers=key(b_token)), 404)
    # …and the execution is untouched.
    assert (await execution_of(api, tenant, a, job["job_id"]))["status"] == "QUEUED"


async def test_operators_and_devices_have_their_own_endpoints(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    device = key(tenant.device_token)
    for method, path in [
        ("POST", "/jobs/execute"),
        ("GET", "/jobs"),
        ("GET", "/jobs/executions"),
        ("GET", "/devices"),
        ("POST", "/groups"),
    ]:
        refused(await api.request(method, V1 + path, headers=device, json={}), 403, "admin")
    refused(await api.get(f"{V1}/jobs"), 401)
    refused(await api.get(f"{V1}/jobs", headers=key("fc_unknown")), 401)
    refused(
        await api.get(f"{V1}/devices/{tenant.device_id}/jobs/next", headers=tenant.headers()),
        403,
        "only the device itself",
    )


# ---------------------------------------------------------------- timeouts


async def test_the_server_times_out_a_silent_device(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService, clock: FakeClock
) -> None:
    job = await execute(api, tenant, timeout_seconds=30)
    got = await poll(api, tenant.device_id, tenant.device_token)
    assert got["deadline_at"] == START_MS + 30_000
    clock.advance(29)
    assert (await service.run_until_idle()).timed_out == 0
    clock.advance(1)
    assert (await service.run_until_idle()).timed_out == 1
    execution = await execution_of(api, tenant, tenant.device_id, job["job_id"])
    assert execution["status"] == "TIMED_OUT"
    assert "timeout_seconds=30" in execution["reason"]
    assert execution["finished_at"] == START_MS + 30_000
    rolled = await job_of(api, tenant, job["job_id"])
    assert rolled["status"] == "COMPLETED"
    assert rolled["counts"]["TIMED_OUT"] == 1
    # The device wakes up later: its result is refused, clearly.
    refused(
        await report(api, tenant.device_id, tenant.device_token, job["job_id"], status="SUCCEEDED"),
        409,
        "already TIMED_OUT",
    )
    # A queued execution never times out: the clock starts when the device starts it.
    queued = await execute(api, tenant, timeout_seconds=1)
    clock.advance(3600)
    await service.run_until_idle()
    assert (await execution_of(api, tenant, tenant.device_id, queued["job_id"]))[
        "status"
    ] == "QUEUED"


async def test_a_device_may_confirm_its_timeout_once_the_deadline_passed(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService, clock: FakeClock
) -> None:
    job = await execute(api, tenant, timeout_seconds=10)
    await poll(api, tenant.device_id, tenant.device_token)
    d, t, j = tenant.device_id, tenant.device_token, job["job_id"]
    refused(await report(api, d, t, j, status="TIMED_OUT"), 403)
    clock.advance(10)
    done = ok(await report(api, d, t, j, status="TIMED_OUT", stdout="partial", exit_code=-9))
    assert (done["status"], done["stdout"], done["exit_code"]) == ("TIMED_OUT", "partial", -9)


async def test_output_reported_after_the_server_timed_out_is_kept(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService, clock: FakeClock
) -> None:
    job = await execute(api, tenant, timeout_seconds=10)
    await poll(api, tenant.device_id, tenant.device_token)
    clock.advance(11)
    await service.tick()
    d, t, j = tenant.device_id, tenant.device_token, job["job_id"]
    late = ok(await report(api, d, t, j, status="TIMED_OUT", stderr="killed"))
    assert (late["status"], late["stderr"], late["version"]) == ("TIMED_OUT", "killed", 4)


# ---------------------------------------------------------------- cancel


async def test_cancel_stops_queued_executions_and_force_stops_running_ones(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    a, at, b, bt = (
        tenant.device_id,
        tenant.device_token,
        tenant.other_device_id,
        tenant.other_device_token,
    )
    job = await execute(api, tenant, target_devices=[str(a), str(b)])
    await poll(api, a, at)
    canceled = ok(
        await api.post(
            f"{V1}/jobs/{job['job_id']}/cancel",
            json={"reason": "wrong script"},
            headers=tenant.headers(),
        )
    )
    assert canceled["status"] == "CANCELED"
    assert canceled["reason"] == "wrong script"
    assert (canceled["counts"]["CANCELED"], canceled["counts"]["IN_PROGRESS"]) == (1, 1)
    assert await poll(api, b, bt) == NO_JOBS
    refused(
        await report(api, b, bt, job["job_id"], status="IN_PROGRESS"),
        409,
        "already CANCELED",
        "wrong script",
    )
    # Without force the running execution may still finish.
    ok(await report(api, a, at, job["job_id"], status="SUCCEEDED"))

    second = await execute(api, tenant, target_devices=[str(a)])
    await poll(api, a, at)
    forced = ok(
        await api.post(
            f"{V1}/jobs/{second['job_id']}/cancel", json={"force": True}, headers=tenant.headers()
        )
    )
    assert forced["force_canceled"] is True
    assert forced["counts"]["CANCELED"] == 1
    refused(
        await report(api, a, at, second["job_id"], status="SUCCEEDED", exit_code=0),
        409,
        "already CANCELED",
        "force-canceled by an operator",
    )
    refused(
        await api.post(
            f"{V1}/jobs/{second['job_id']}/cancel", json={"force": "yes"}, headers=tenant.headers()
        ),
        400,
        "force must be true or false",
    )


async def test_a_completed_job_cannot_be_canceled(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    job = await execute(api, tenant)
    await poll(api, tenant.device_id, tenant.device_token)
    ok(await report(api, tenant.device_id, tenant.device_token, job["job_id"], status="REJECTED"))
    refused(
        await api.post(f"{V1}/jobs/{job['job_id']}/cancel", headers=tenant.headers()),
        409,
        "already COMPLETED",
    )


async def test_operators_cancel_or_remove_one_execution(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    a, b = tenant.device_id, tenant.other_device_id
    job = await execute(api, tenant, target_devices=[str(a), str(b)])
    j, h = job["job_id"], tenant.headers()
    removed = ok(await api.post(f"{V1}/devices/{b}/jobs/{j}/remove", headers=h))
    assert (removed["status"], removed["reason"]) == ("REMOVED", "removed by an operator")
    await poll(api, a, tenant.device_token)
    refused(await api.post(f"{V1}/devices/{a}/jobs/{j}/cancel", headers=h), 409, "force")
    stopped = ok(
        await api.post(f"{V1}/devices/{a}/jobs/{j}/cancel", json={"force": True}, headers=h)
    )
    assert stopped["status"] == "CANCELED"
    rolled = await job_of(api, tenant, j)
    assert rolled["status"] == "COMPLETED"
    assert (rolled["counts"]["REMOVED"], rolled["counts"]["CANCELED"]) == (1, 1)
    refused(
        await api.post(f"{V1}/devices/{a}/jobs/{j}/cancel", headers=key(tenant.device_token)), 403
    )


# ---------------------------------------------------------------- rollout, abort, retries


async def test_rollout_queues_at_most_maximum_per_minute(
    api: httpx.AsyncClient,
    platform: Platform,
    tenant: Tenant,
    service: JobsService,
    clock: FakeClock,
) -> None:
    extra = await add_devices(platform, tenant, 3)
    devices = [tenant.device_id, tenant.other_device_id, *(d for d, _ in extra)]
    job = await execute(api, tenant, target_devices=[str(d) for d in devices], maximum_per_minute=2)
    assert (job["counts"]["QUEUED"], job["counts"]["pending_rollout"]) == (2, 3)
    # The first two targets got theirs; the third has nothing yet.
    assert (await poll(api, devices[0], tenant.device_token))["job_id"] == job["job_id"]
    assert await poll(api, extra[0][0], extra[0][1]) == NO_JOBS
    clock.advance(59)
    assert (await service.run_until_idle()).released == 0
    clock.advance(1)
    assert (await service.run_until_idle()).released == 2
    assert (await poll(api, extra[0][0], extra[0][1]))["job_id"] == job["job_id"]
    rolled = await job_of(api, tenant, job["job_id"])
    assert (rolled["counts"]["pending_rollout"], rolled["counts"]["total"]) == (1, 5)
    clock.advance(60)
    assert (await service.run_until_idle()).released == 1
    assert (await job_of(api, tenant, job["job_id"]))["counts"]["pending_rollout"] == 0


async def test_abort_criteria_cancel_the_rest_of_the_job(
    api: httpx.AsyncClient, platform: Platform, tenant: Tenant, service: JobsService
) -> None:
    extra = await add_devices(platform, tenant, 2)
    fleet = [
        (tenant.device_id, tenant.device_token),
        (tenant.other_device_id, tenant.other_device_token),
        *extra,
    ]
    job = await execute(
        api,
        tenant,
        target_devices=[str(d) for d, _ in fleet],
        abort_criteria=[{"failure_type": "FAILED", "threshold_percentage": 50, "min_finished": 2}],
    )
    j = job["job_id"]
    (d0, t0), (d1, t1) = fleet[0], fleet[1]
    await poll(api, d0, t0)
    ok(await report(api, d0, t0, j, status="FAILED", exit_code=1))
    assert (await job_of(api, tenant, j))["status"] == "IN_PROGRESS"  # 1 finished < 2
    await poll(api, d1, t1)
    ok(await report(api, d1, t1, j, status="FAILED", exit_code=1))
    aborted = await job_of(api, tenant, j)
    assert aborted["status"] == "CANCELED"
    assert "aborted: 2 of 2 finished executions (100.0%) ended FAILED" in aborted["reason"]
    assert (aborted["counts"]["FAILED"], aborted["counts"]["CANCELED"]) == (2, 2)
    assert await poll(api, *extra[0]) == NO_JOBS


async def test_retries_queue_new_attempts_up_to_the_count(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    job = await execute(api, tenant, retries=[{"failure_type": "FAILED", "number_of_retries": 2}])
    d, t, j = tenant.device_id, tenant.device_token, job["job_id"]
    numbers = []
    for _ in range(3):
        got = await poll(api, d, t)
        numbers.append(got["execution_number"])
        ok(await report(api, d, t, j, status="FAILED", exit_code=2))
    assert numbers == [1, 2, 3]
    assert await poll(api, d, t) == NO_JOBS
    rolled = await job_of(api, tenant, j)
    assert rolled["status"] == "COMPLETED"
    assert (rolled["counts"]["FAILED"], rolled["counts"]["total"]) == (1, 1)
    attempts = ok(await api.get(f"{V1}/jobs/{j}/executions", headers=tenant.headers()))
    assert sorted(e["execution_number"] for e in attempts) == [1, 2, 3]
    latest = ok(
        await api.get(
            f"{V1}/jobs/{j}/executions", params={"latest": "true"}, headers=tenant.headers()
        )
    )
    assert [e["execution_number"] for e in latest] == [3]


async def test_a_timed_out_execution_is_retried(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService, clock: FakeClock
) -> None:
    job = await execute(
        api,
        tenant,
        timeout_seconds=5,
        retries=[{"failure_type": "TIMED_OUT", "number_of_retries": 1}],
    )
    await poll(api, tenant.device_id, tenant.device_token)
    clock.advance(6)
    await service.run_until_idle()
    again = await poll(api, tenant.device_id, tenant.device_token)
    assert (again["job_id"], again["execution_number"]) == (job["job_id"], 2)
    ok(await report(api, tenant.device_id, tenant.device_token, job["job_id"], status="SUCCEEDED"))
    rolled = await job_of(api, tenant, job["job_id"])
    assert rolled["status"] == "COMPLETED"
    assert rolled["counts"]["SUCCEEDED"] == 1


# ---------------------------------------------------------------- listing


async def test_listing_with_filters(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    h = tenant.headers()
    done = await execute(api, tenant, job_name="done")
    await poll(api, tenant.device_id, tenant.device_token)
    ok(await report(api, tenant.device_id, tenant.device_token, done["job_id"], status="SUCCEEDED"))
    open_job = await execute(
        api, tenant, job_name="open", target_devices=[str(tenant.other_device_id)]
    )
    jobs = ok(await api.get(f"{V1}/jobs", headers=h))
    assert [j["job_name"] for j in jobs] == ["open", "done"]
    completed = ok(await api.get(f"{V1}/jobs", params={"status": "completed"}, headers=h))
    assert [j["job_id"] for j in completed] == [done["job_id"]]
    assert len(ok(await api.get(f"{V1}/jobs", params={"limit": "1"}, headers=h))) == 1
    refused(await api.get(f"{V1}/jobs", params={"status": "DONE"}, headers=h), 400, "status")

    executions = f"{V1}/jobs/executions"
    queued = ok(await api.get(executions, params={"status": "QUEUED"}, headers=h))
    assert [e["job_id"] for e in queued] == [open_job["job_id"]]
    by_device = ok(await api.get(executions, params={"device": str(tenant.device_id)}, headers=h))
    assert [e["status"] for e in by_device] == ["SUCCEEDED"]
    by_job = ok(await api.get(executions, params={"job": open_job["job_id"]}, headers=h))
    assert [e["device_uuid"] for e in by_job] == [str(tenant.other_device_id)]
    refused(await api.get(executions, params={"status": "nope"}, headers=h), 400)
    refused(await api.get(f"{V1}/jobs/99", headers=h), 404, "job 99")
    refused(await api.get(f"{V1}/jobs/abc", headers=h), 404)


# ---------------------------------------------------------------- bad input at execute


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"job_document": {"version": "1.0", "steps": []}}, 400, "job_document.steps"),
        (
            {"job_document": {"version": "1.0", "steps": [{"action": {"type": "runShell"}}]}},
            400,
            "job_document.steps[0].action.type must be 'runCommand' or 'runHandler'",
        ),
        ({"job_document": "echo hi"}, 400, "job_document must be a JSON object"),
        ({"template_id": 999}, 404, "template '999' does not exist"),
        ({"template_id": "no-such"}, 404, "template 'no-such'"),
        ({"template_id": 2}, 400, "parameter 'service' is required"),
        ({"template_id": 2, "parameters": {"service": "a;b"}}, 400, "does not match"),
        ({"target_type": "everyone"}, 400, "target_type must be device, group or all"),
        ({"target_devices": ["123"]}, 404, "device 123 does not exist"),
        ({"target_devices": ["pi-1"]}, 404, "device pi-1 does not exist"),
        ({"target_type": "group", "target_devices": None, "target_groups": ["x"]}, 404, "group x"),
        ({"timeout_seconds": -1}, 400, "timeout_seconds must be a whole number"),
        ({"maximum_per_minute": 5000}, 400, "maximum_per_minute"),
    ],
)
async def test_bad_execute_requests_store_nothing(
    api: httpx.AsyncClient,
    tenant: Tenant,
    service: JobsService,
    body: dict[str, Any],
    status: int,
    words: str,
) -> None:
    payload = {
        "job_name": "bad",
        "job_document": DOC,
        "target_type": "device",
        "target_devices": [str(tenant.device_id)],
        **body,
    }
    if "template_id" in body:
        payload.pop("job_document")
    payload = {k: v for k, v in payload.items() if v is not None}
    refused(
        await api.post(f"{V1}/jobs/execute", json=payload, headers=tenant.headers()), status, words
    )
    assert ok(await api.get(f"{V1}/jobs", headers=tenant.headers())) == []
    assert await poll(api, tenant.device_id, tenant.device_token) == NO_JOBS


async def test_an_empty_group_is_refused(
    api: httpx.AsyncClient, tenant: Tenant, service: JobsService
) -> None:
    ok(await api.post(f"{V1}/groups", json={"name": "empty"}, headers=tenant.headers()), 201)
    refused(
        await api.post(
            f"{V1}/jobs/execute",
            json={
                "job_name": "x",
                "job_document": DOC,
                "target_type": "group",
                "target_groups": ["empty"],
            },
            headers=tenant.headers(),
        ),
        400,
        "names no devices",
    )


# ---------------------------------------------------------------- tenant isolation


async def test_another_organisation_sees_nothing(
    api: httpx.AsyncClient, platform: Platform, tenant: Tenant, service: JobsService
) -> None:
    other = await make_tenant(platform.store, "other")
    group = ok(await api.post(f"{V1}/groups", json={"name": "g"}, headers=tenant.headers()), 201)
    template = ok(
        await api.post(
            f"{V1}/jobs/templates",
            json={"name": "t", "job_document": DOC},
            headers=tenant.headers(),
        ),
        201,
    )
    job = await execute(api, tenant)
    a, j = tenant.device_id, job["job_id"]
    admin = other.headers()
    for method, path in [
        ("GET", f"/jobs/{j}"),
        ("GET", f"/jobs/{j}/executions"),
        ("POST", f"/jobs/{j}/cancel"),
        ("GET", f"/devices/{a}"),
        ("GET", f"/devices/{a}/jobs"),
        ("GET", f"/devices/{a}/jobs/next"),
        ("GET", f"/devices/{a}/jobs/{j}"),
        ("POST", f"/devices/{a}/jobs/{j}/cancel"),
        ("POST", f"/devices/{a}/jobs/{j}/remove"),
        ("GET", f"/groups/{group['id']}"),
        ("DELETE", f"/groups/{group['id']}"),
        ("GET", f"/jobs/templates/{template['id']}"),
        ("DELETE", f"/jobs/templates/{template['id']}"),
    ]:
        refused(await api.request(method, V1 + path, headers=admin), 404)
    refused(await report(api, a, other.admin_token, j, status="FAILED"), 404)
    refused(await report(api, a, other.device_token, j, status="FAILED"), 404)
    refused(await api.get(f"{V1}/devices/{a}/jobs/next", headers=key(other.device_token)), 404)
    refused(
        await api.post(
            f"{V1}/jobs/execute",
            json={
                "job_name": "x",
                "job_document": DOC,
                "target_type": "device",
                "target_devices": [str(a)],
            },
            headers=admin,
        ),
        404,
        f"device {a}",
    )
    for path in ("/jobs", "/jobs/executions", "/groups"):
        assert ok(await api.get(V1 + path, headers=admin)) == []
    assert ok(await api.get(f"{V1}/jobs/executions", params={"job": j}, headers=admin)) == []
    everything = ok(await api.get(f"{V1}/devices", headers=admin))
    assert {d["uuid"] for d in everything} == {str(other.device_id), str(other.other_device_id)}
    # Nothing of theirs moved.
    assert (await execution_of(api, tenant, a, j))["status"] == "QUEUED"
    assert (await job_of(api, tenant, j))["status"] == "IN_PROGRESS"
