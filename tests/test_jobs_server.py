"""Jobs against a real ``fleetcloud serve`` over a real socket: registration with a key
from the CLI, long-poll wake-up, and the server's own timeout loop."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.fleetcloud import FLEETCLOUD, Server, cli_json, running_server

DOC = {
    "version": "1.0",
    "steps": [{"action": {"type": "runCommand", "input": {"command": "echo,hi"}}}],
}


@dataclass
class Fleet:
    server: Server
    database: str
    organisation_id: str
    admin_token: str
    provisioning_key: str

    @property
    def v1(self) -> str:
        return f"{self.server.url}/api/v1"

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    organisation = cli_json("org", "create", "acme", "--database", database, "--json")
    org_id = organisation["organisation_id"]
    key = cli_json(
        "device", "provisioning-key", "create", "--org", org_id, "--database", database, "--json"
    )
    assert key["organisation_id"] == org_id
    with running_server(database) as server:
        yield Fleet(server, database, org_id, organisation["token"], key["provisioning_key"])


async def register(client: httpx.AsyncClient, fleet: Fleet, name: str) -> dict[str, Any]:
    answer = await client.post(
        f"{fleet.v1}/device/register",
        json={"provisioning_key": fleet.provisioning_key, "name": name},
    )
    assert answer.status_code == 201, answer.text
    device: dict[str, Any] = answer.json()
    return device


async def execute(client: httpx.AsyncClient, fleet: Fleet, uuid: str, **extra: Any) -> str:
    answer = await client.post(
        f"{fleet.v1}/jobs/execute",
        json={
            "job_name": "hello",
            "job_document": DOC,
            "target_type": "device",
            "target_devices": [uuid],
            **extra,
        },
        headers=fleet.admin,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["job_id"])


async def test_a_registered_device_long_polls_and_reports(fleet: Fleet) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        device = await register(client, fleet, "pi-1")
        uuid, headers = device["uuid"], {"X-Device-API-Key": device["api_key"]}
        next_url = f"{fleet.v1}/devices/{uuid}/jobs/next"
        idle = await client.get(next_url, headers=headers)
        assert idle.json() == {"message": "No pending jobs"}

        waiting = asyncio.create_task(client.get(next_url, params={"wait": 30}, headers=headers))
        await asyncio.sleep(0.5)  # the poll is parked in the server
        assert not waiting.done()
        job_id = await execute(client, fleet, uuid)
        queued_at = time.monotonic()
        got = (await waiting).json()
        # Woken in the server at once, not at the end of its 30 s wait.
        assert time.monotonic() - queued_at < 3
        assert (got["job_id"], got["job_name"], got["status"]) == (job_id, "hello", "IN_PROGRESS")

        status_url = f"{fleet.v1}/devices/{uuid}/jobs/{job_id}/status"
        body = {"status": "SUCCEEDED", "exit_code": 0, "stdout": "hi\n", "expected_version": 2}
        done = await client.patch(status_url, json=body, headers=headers)
        assert done.status_code == 200, done.text
        job = (await client.get(f"{fleet.v1}/jobs/{job_id}", headers=fleet.admin)).json()
        assert job["status"] == "COMPLETED"
        assert job["counts"]["SUCCEEDED"] == 1


async def test_a_job_queued_by_another_server_process_wakes_the_long_poll(fleet: Fleet) -> None:
    """Two ``fleetcloud serve`` processes on one database: the device waits on one, the
    operator queues the job on the other. Nothing in the waiting process queued it, so
    only its sweep of the database can answer the poll before the wait runs out."""
    with running_server(fleet.database) as other:
        async with httpx.AsyncClient(timeout=90) as client:
            device = await register(client, fleet, "pi-3")
            uuid, headers = device["uuid"], {"X-Device-API-Key": device["api_key"]}
            next_url = f"{other.url}/api/v1/devices/{uuid}/jobs/next"
            waiting = asyncio.create_task(
                client.get(next_url, params={"wait": 60}, headers=headers)
            )
            await asyncio.sleep(0.5)  # the poll is parked in the other process
            assert not waiting.done()
            job_id = await execute(client, fleet, uuid)
            queued_at = time.monotonic()
            got = (await waiting).json()
            assert time.monotonic() - queued_at < 30  # well before the 60 s wait ends
            assert (got["job_id"], got["status"]) == (job_id, "IN_PROGRESS")
            execution = await client.get(
                f"{fleet.v1}/devices/{uuid}/jobs/{job_id}", headers=fleet.admin
            )
            assert (execution.json()["status"], execution.json()["version"]) == ("IN_PROGRESS", 2)


async def test_the_server_times_out_a_silent_device_on_its_own(fleet: Fleet) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        device = await register(client, fleet, "pi-2")
        uuid, headers = device["uuid"], {"X-Device-API-Key": device["api_key"]}
        job_id = await execute(client, fleet, uuid, timeout_seconds=1)
        got = await client.get(f"{fleet.v1}/devices/{uuid}/jobs/next", headers=headers)
        assert got.json()["job_id"] == job_id
        # The device now goes silent. Nobody calls tick(): `serve` runs the loop.
        execution_url = f"{fleet.v1}/devices/{uuid}/jobs/{job_id}"
        status = "IN_PROGRESS"
        deadline = time.monotonic() + 20
        while status == "IN_PROGRESS" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            status = (await client.get(execution_url, headers=fleet.admin)).json()["status"]
        assert status == "TIMED_OUT"


def test_provisioning_key_for_an_unknown_organisation_fails_clearly(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'empty.db'}"
    done = subprocess.run(
        [
            *FLEETCLOUD,
            "device",
            "provisioning-key",
            "create",
            "--org",
            "42",
            "--database",
            database,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "organisation 42 does not exist" in done.stderr
