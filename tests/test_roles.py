"""``fleetcloud serve --role``: the same code split over processes on PostgreSQL + Kafka.

Three real ``fleetcloud serve`` processes share one database and one broker:

- ``front``: ``--role api,scheduler`` — the API, and a scheduler;
- ``worker``: ``--role dispatcher`` — only health on its port;
- ``back``: ``--role dispatcher,scheduler`` — a second dispatcher and a second scheduler;
- ``edge``: ``--role api`` — a second API, without a scheduler.

The app reports which process ran it (its worker's parent), so the tests see the two
dispatchers share the events, each event run once, and each schedule fire run once.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from fleetcloud.core.types import AgentKind, Principal, Role
from fleetcloud.store import open_store
from tests.conftest import fresh_postgres_database
from tests.servers.fleetcloud import FLEETCLOUD, Server
from tests.servers.kafka import tansu_broker
from tests.test_apps_kit import deploy_body

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.kafka]

DEVICES = 16  # spread over the topic's partitions, so that both dispatchers get some
PER_DEVICE = 3

REPORTER = """
import os

from fleetcloud.sdk.processor import Application, run_app


class Reporter(Application):
    async def on_message_create(self, event):
        print(f"served by {os.getppid()}")

    async def on_schedule(self, event):
        print(f"served by {os.getppid()}")


def handler(event, context):
    run_app(Reporter(), event, context)
"""


@dataclass
class Cluster:
    front: Server
    worker: Server
    back: Server
    edge: Server
    database: str
    token: str
    devices: list[str]
    device_key: str  # the first device's credential
    installations: list[str]

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.front.url, headers=headers, timeout=30)

    def pid(self, server: Server) -> int:
        assert server.process is not None
        return server.process.pid

    def invocations(self, handler: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        with self.http() as http:
            for installation in self.installations:
                response = http.get(
                    f"/api/apps/installations/{installation}/invocations", params={"limit": 1000}
                )
                assert response.status_code == 200, response.text
                found.extend(i for i in response.json() if i["handler"] == handler)
        return found

    def publish_round(self, count: int) -> list[str]:
        ids = []
        with self.http() as http:
            for _ in range(count):
                for device in self.devices:
                    response = http.post(
                        f"/api/agents/{device}/channels/readings/messages",
                        json={"data": {"level": 1}},
                    )
                    assert response.status_code == 200, response.text
                    ids.append(response.json()["id"])
        return ids


def served_by(invocation: dict[str, Any]) -> int:
    match = re.search(r"served by (\d+)", invocation["logs"])
    assert match is not None, invocation
    return int(match.group(1))


def eventually(check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.25)


async def seed(database: str) -> tuple[str, list[str], str]:
    """An organisation with an admin token and ``DEVICES`` devices (and the first one's
    credential)."""
    async with open_store(database) as store:
        organisation = await store.create_organisation("roles")
        principal = Principal(organisation.agent_id, organisation.id, Role.ADMIN)
        token = await store.create_token(principal)
        devices = [
            str((await store.create_agent(organisation.id, AgentKind.DEVICE, f"d{n}")).id)
            for n in range(DEVICES)
        ]
        device = Principal(int(devices[0]), organisation.id, Role.DEVICE)
        key = await store.create_token(device)
    return token, devices, key


def install_reporter(cluster: Cluster) -> None:
    with cluster.http() as http:
        body = deploy_body("reporter", {"src/reporter/__init__.py": REPORTER})
        deployed = http.post("/api/apps", json=body)
        assert deployed.status_code == 201, deployed.text
        app_id = deployed.json()["id"]
        config = {"dv_proc_subscriptions": ["readings"], "dv_proc_schedules": "rate(1 hour)"}
        for device in cluster.devices:
            installed = http.post(
                f"/api/apps/{app_id}/installations", json={"agent_id": device, "config": config}
            )
            assert installed.status_code == 201, installed.text
            cluster.installations.append(installed.json()["id"])


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[str]:
    """A broker of this module's own. Its processes leave the dispatcher group one after
    another as they stop, and the test broker (tansu) can be left rebalancing that group
    for a long while, which a later test's dispatcher joining it would wait out."""
    with tansu_broker() as url:
        yield url


@pytest.fixture(scope="module")
def cluster(
    postgres_url: str, own_kafka: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    kafka_url = own_kafka
    database = asyncio.run(fresh_postgres_database(postgres_url))
    token, devices, key = asyncio.run(seed(database))
    tmp = tmp_path_factory.mktemp("roles")
    front = Server(database, extra=("--bus", kafka_url, "--role", "api,scheduler"))
    worker = Server(database, extra=("--bus", kafka_url, "--role", "dispatcher"))
    back = Server(
        database, extra=("--bus", kafka_url, "--role", "dispatcher", "--role", "scheduler")
    )
    edge = Server(database, extra=("--bus", kafka_url, "--role", "api"))
    with pytest.MonkeyPatch.context() as env:  # the server processes inherit these
        env.setenv("FLEETCLOUD_APPS_CACHE_DIR", str(tmp / "cache"))
        env.setenv("FLEETCLOUD_APPS_API_URL", front.url)  # where the dispatchers' apps go
        env.setenv("FLEETCLOUD_APPS_MAX_WORKERS", "2")
        env.setenv("FLEETCLOUD_APPS_PER_VERSION", "2")
        started: list[Server] = []
        try:
            for server in (front, worker, back, edge):
                server.start(timeout=60)
                started.append(server)
            found = Cluster(front, worker, back, edge, database, token, devices, key, [])
            install_reporter(found)
            yield found
        finally:
            for server in reversed(started):
                server.stop()


def test_two_dispatchers_share_the_events_and_run_each_once(cluster: Cluster) -> None:
    dispatchers = {cluster.pid(cluster.worker), cluster.pid(cluster.back)}

    def ran(ids: set[str]) -> list[dict[str, Any]] | None:
        found = [i for i in cluster.invocations("on_message_create") if i["event_id"] in ids]
        return found if {i["event_id"] for i in found} == ids else None

    # Both dispatchers join the consumer group as they start; until the group has
    # settled, a partition may change hands and an event come twice (at least once).
    # Rounds go on until one is shared by both, which means both hold partitions.
    for _ in range(20):
        warm_up = set(cluster.publish_round(1))
        if {served_by(i) for i in eventually(functools.partial(ran, warm_up))} == dispatchers:
            break
    else:
        raise AssertionError("the two dispatchers never shared a round of events")

    ids = cluster.publish_round(PER_DEVICE)
    found = eventually(lambda: ran(set(ids)))
    assert sorted(i["event_id"] for i in found) == sorted(ids)  # each event exactly once
    assert {i["status"] for i in found} == {"OK"}
    assert {served_by(i) for i in found} == dispatchers  # shared; never the API process


def test_two_schedulers_fire_each_schedule_once(cluster: Cluster) -> None:
    due = int(time.time() * 1000)
    asyncio.run(make_schedules_due(cluster.database, due))
    expected = {f"schedule-{installation}-{due}" for installation in cluster.installations}

    def fired() -> list[dict[str, Any]] | None:
        found = [i for i in cluster.invocations("on_schedule") if i["event_id"] in expected]
        return found if {i["event_id"] for i in found} == expected else None

    eventually(fired)
    time.sleep(3)  # both schedulers tick every second: room for a second fire, if any
    found = fired()
    assert found is not None
    assert sorted(i["event_id"] for i in found) == sorted(expected)  # once each
    assert {i["status"] for i in found} == {"OK"}
    assert asyncio.run(next_fire_times(cluster.database)) > due  # moved on


async def make_schedules_due(database: str, at_ms: int) -> None:
    connection = await asyncpg.connect(database)
    try:
        await connection.execute("UPDATE app_schedules SET next_ms = $1", at_ms)
    finally:
        await connection.close()


async def next_fire_times(database: str) -> int:
    connection = await asyncpg.connect(database)
    try:
        return int(await connection.fetchval("SELECT min(next_ms) FROM app_schedules"))
    finally:
        await connection.close()


def test_a_process_without_the_api_serves_health_only(cluster: Cluster) -> None:
    health = httpx.get(f"{cluster.worker.url}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["roles"] == ["dispatcher"]
    assert health.json()["bus"] == "kafka"
    metrics = httpx.get(f"{cluster.worker.url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "fleetcloud_http_requests_total" in metrics.text
    headers = {"Authorization": f"Bearer {cluster.token}"}
    api = httpx.get(f"{cluster.worker.url}/api/apps", headers=headers, timeout=10)
    assert api.status_code == 404
    assert httpx.get(f"{cluster.front.url}/api/apps", headers=headers).status_code == 200


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEETCLOUD, "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_serve_help_documents_the_roles() -> None:
    done = serve("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for role in ("api", "dispatcher", "scheduler", "mqtt", "coap"):
        assert role in text
    assert "--role" in text
    assert "/healthz" in text


def test_an_unknown_role_is_refused_by_name(tmp_path: Any) -> None:
    done = serve("--role", "api,dispatchr", "--database", f"sqlite:///{tmp_path / 'db'}")
    assert done.returncode != 0
    assert "unknown role dispatchr" in done.stderr


def test_a_dispatcher_without_the_api_must_be_told_where_the_api_is(tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLEETCLOUD_APPS_API_URL"}
    done = subprocess.run(
        [
            *FLEETCLOUD,
            "serve",
            "--role",
            "dispatcher",
            "--database",
            f"sqlite:///{tmp_path / 'db'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode != 0
    assert "FLEETCLOUD_APPS_API_URL" in done.stderr


JOB = {
    "version": "1.0",
    "steps": [{"action": {"type": "runCommand", "input": {"command": "true"}}}],
}


async def test_an_api_without_the_scheduler_hears_of_jobs_queued_elsewhere(
    cluster: Cluster,
) -> None:
    """A device long-polls the API process that has no scheduler; the job is queued
    through the other API. Only the waiting process's sweep of the database can answer
    the poll before its wait runs out."""
    device = cluster.devices[0]
    headers = {"X-Device-API-Key": cluster.device_key}
    admin = {"Authorization": f"Bearer {cluster.token}"}
    async with httpx.AsyncClient(timeout=90) as client:
        waiting = asyncio.create_task(
            client.get(
                f"{cluster.edge.url}/api/v1/devices/{device}/jobs/next",
                params={"wait": 60},
                headers=headers,
            )
        )
        await asyncio.sleep(0.5)  # parked in the edge process
        queued = await client.post(
            f"{cluster.front.url}/api/v1/jobs/execute",
            json={
                "job_name": "roles",
                "job_document": JOB,
                "target_type": "device",
                "target_devices": [device],
            },
            headers=admin,
        )
        assert queued.status_code == 201, queued.text
        got = (await waiting).json()
    assert (got.get("job_id"), got.get("status")) == (queued.json()["job_id"], "IN_PROGRESS")
