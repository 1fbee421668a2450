"""The CloudJobsAdapter against a real ``fleetcloud serve`` (jobs API), running real
subprocesses: each state a device reports, retries through a network failure, cancel,
timeout, and recovery after a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fleetcloud.agent.adapter import LOST, RESTARTED, AdapterOptions, CloudJobsAdapter
from fleetcloud.agent.backoff import Backoff
from fleetcloud.agent.cloud import JobsClient
from fleetcloud.agent.document import split_command
from fleetcloud.agent.engine import JobEngine
from fleetcloud.agent.history import RUNNING, CurrentJob, CurrentJobFile
from fleetcloud.agent.process import boot_id, start_ticks
from tests.test_agent_support import Cloud, cloud, cloud_template, eventually

__all__ = ["cloud", "cloud_template"]  # fixtures used here

PY = sys.executable
AdapterFactory = Callable[..., CloudJobsAdapter]


# ---------------------------------------------------------------- helpers


def command_step(argv: list[str], name: str = "step", **action: Any) -> dict[str, Any]:
    return {"action": {"name": name, "type": "runCommand", "input": {"command": argv}, **action}}


def document(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"version": "1.0", "includeStdOut": True, "steps": list(steps), **extra}


def wait_for_file(marker: Path, then: str = "") -> list[str]:
    """A step that touches ``marker``.started, waits for ``marker`` to exist, prints."""
    code = (
        "import pathlib, sys, time\n"
        "marker = pathlib.Path(sys.argv[1])\n"
        "pathlib.Path(sys.argv[1] + '.started').touch()\n"
        "deadline = time.monotonic() + 100\n"
        "while not marker.exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "print(sys.argv[2])\n"
    )
    return [PY, "-c", code, str(marker), then]


def execute(cloud: Cloud, doc: dict[str, Any], timeout: int | None = None) -> str:
    body: dict[str, Any] = {
        "job_name": "test-job",
        "job_document": doc,
        "target_type": "device",
        "target_devices": [cloud.device_id],
    }
    if timeout is not None:
        body["timeout_seconds"] = timeout
    with cloud.admin() as admin:
        answer = admin.post("/api/v1/jobs/execute", json=body)
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


def execution(cloud: Cloud, job_id: str) -> dict[str, Any]:
    with cloud.admin() as admin:
        answer = admin.get(f"/api/v1/jobs/{job_id}/executions")
    answer.raise_for_status()
    [found] = answer.json()
    result: dict[str, Any] = found
    return result


async def until(check: Callable[[], Any], timeout: float = 30, what: str = "it") -> Any:
    """``eventually`` for checks that block (HTTP calls to the server)."""
    return await eventually(lambda: asyncio.to_thread(check), timeout, what)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    return state == "Z"


def sleeper_in_its_own_group() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


@pytest.fixture
async def running_cloud(cloud: Cloud) -> Cloud:
    await asyncio.to_thread(cloud.server.start)
    return cloud


@pytest.fixture
async def adapters(tmp_path: Path, cloud: Cloud) -> AsyncIterator[AdapterFactory]:
    clients: list[JobsClient] = []

    def make(data: str = "agent", **options: Any) -> CloudJobsAdapter:
        directory = tmp_path / data
        directory.mkdir(mode=0o700, exist_ok=True)
        client = JobsClient(cloud.jobs_url, cloud.device_token, timeout=5)
        clients.append(client)
        defaults: dict[str, Any] = {
            "polling_interval": 0.2,
            "long_poll": 0,
            "backoff": Backoff(0.1, 0.5),
            "heartbeat_seconds": 0.2,
            "grace_seconds": 5,
        }
        engine = JobEngine(directory / "handlers", kill_seconds=1)
        return CloudJobsAdapter(
            client,
            engine,
            cloud.device_id,
            directory,
            options=AdapterOptions(**{**defaults, **options}),
        )

    try:
        yield make
    finally:
        for client in clients:
            await client.aclose()


def in_background(coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
    return asyncio.ensure_future(coroutine)


# ---------------------------------------------------------------- the happy path


async def test_a_job_goes_in_progress_then_succeeded_with_its_output(
    running_cloud: Cloud, adapters: AdapterFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    job_id = execute(running_cloud, document(command_step(wait_for_file(marker, "hello fleet"))))
    adapter = adapters()
    run = in_background(adapter.run_until_idle())
    await until(lambda: Path(f"{marker}.started").exists(), what="the step to start")
    running = execution(running_cloud, job_id)
    assert running["status"] == "IN_PROGRESS"
    assert adapter.get_status()["currentJobId"] == job_id
    marker.touch()
    assert await asyncio.wait_for(run, 60) == 1
    done = execution(running_cloud, job_id)
    assert done["status"] == "SUCCEEDED"
    assert done["exit_code"] == 0
    assert done["stdout"] == "hello fleet\n"
    assert done["status_details"]["steps"] == [
        {"name": "step", "status": "SUCCEEDED", "exit_code": 0}
    ]
    [entry] = adapter.get_job_history()
    assert (entry["job_id"], entry["status"], entry["report"]) == (job_id, "SUCCEEDED", "delivered")
    assert entry["stdout"] == "hello fleet\n"
    assert CurrentJobFile(tmp_path / "agent" / "current.json").load() is None


async def test_a_failing_job_reports_failed_with_the_reason(
    running_cloud: Cloud, adapters: AdapterFactory
) -> None:
    failing = [PY, "-c", "import sys; print('disk full', file=sys.stderr); sys.exit(4)"]
    job_id = execute(
        running_cloud, document(command_step(failing, "check"), command_step(["true"], "next"))
    )
    assert await adapters().run_until_idle() == 1
    done = execution(running_cloud, job_id)
    assert done["status"] == "FAILED"
    assert done["exit_code"] == 4
    assert done["stderr"] == "disk full\n"
    assert done["status_details"]["reason"] == "step 'check' failed: exited with code 4"
    assert [s["status"] for s in done["status_details"]["steps"]] == ["FAILED", "SKIPPED"]


async def test_a_local_timeout_ends_timed_out_with_the_output(
    running_cloud: Cloud, adapters: AdapterFactory
) -> None:
    slow = [PY, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    job_id = execute(running_cloud, document(command_step(slow)), timeout=1)
    started = time.monotonic()
    assert await adapters().run_until_idle() == 1
    assert time.monotonic() - started < 30
    done = execution(running_cloud, job_id)
    assert done["status"] == "TIMED_OUT"
    assert done["stdout"] == "started\n"


async def test_long_polling_picks_up_a_job_as_soon_as_it_is_queued(
    running_cloud: Cloud, adapters: AdapterFactory
) -> None:
    # With a 60 s polling interval only the held request can get the job in time.
    adapter = adapters(long_poll=20, polling_interval=60)
    run = in_background(adapter.run())
    try:
        await asyncio.sleep(0.5)  # let the first poll reach the server and wait there
        job_id = execute(running_cloud, document(command_step(["echo", "quick"])))
        await until(
            lambda: execution(running_cloud, job_id)["status"] == "SUCCEEDED",
            15,
            "the job to succeed",
        )
    finally:
        adapter.stop()
        await asyncio.wait_for(run, 30)


async def test_interval_polling_when_long_polling_is_off(
    running_cloud: Cloud, adapters: AdapterFactory
) -> None:
    adapter = adapters(long_poll=0, polling_interval=0.1)
    run = in_background(adapter.run())
    try:
        job_id = execute(running_cloud, document(command_step(["echo", "polled"])))
        await until(lambda: execution(running_cloud, job_id)["status"] == "SUCCEEDED", 30)
    finally:
        adapter.stop()
        await asyncio.wait_for(run, 30)
    assert not adapter.get_status()["polling"]


# ---------------------------------------------------------------- network failures


async def test_the_final_status_is_retried_through_a_network_failure(
    running_cloud: Cloud, adapters: AdapterFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    job_id = execute(running_cloud, document(command_step(wait_for_file(marker, "done"))))
    adapter = adapters(status_retries=100, backoff=Backoff(0.2, 1.0))
    run = in_background(adapter.run_until_idle())
    await until(lambda: Path(f"{marker}.started").exists(), what="the step to start")
    await asyncio.to_thread(running_cloud.server.stop)  # the network goes away
    marker.touch()
    current = CurrentJobFile(tmp_path / "agent" / "current.json")
    await until(lambda: (c := current.load()) and c.phase == "finished", what="the job to end")
    await asyncio.sleep(0.5)  # at least one attempt fails
    assert not run.done()
    await asyncio.to_thread(running_cloud.server.start)
    assert await asyncio.wait_for(run, 60) == 1
    done = execution(running_cloud, job_id)
    assert (done["status"], done["stdout"]) == ("SUCCEEDED", "done\n")
    assert current.load() is None


async def test_an_undelivered_report_is_kept_until_the_cloud_is_back(
    running_cloud: Cloud, adapters: AdapterFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    job_id = execute(running_cloud, document(command_step(wait_for_file(marker, "kept"))))
    adapter = adapters(status_retries=0, backoff=Backoff(0.1, 0.3))
    run = in_background(adapter.run())
    try:
        await until(lambda: Path(f"{marker}.started").exists(), what="the step to start")
        await asyncio.to_thread(running_cloud.server.kill)
        marker.touch()
        current = CurrentJobFile(tmp_path / "agent" / "current.json")
        await until(lambda: (c := current.load()) and c.phase == "finished", what="the end")
        await asyncio.sleep(1)  # the retries are spent; the report waits on disk
        pending = current.load()
        assert pending is not None
        assert pending.report is not None
        assert pending.report["status"] == "SUCCEEDED"
        await asyncio.to_thread(running_cloud.server.start)
        await until(lambda: current.load() is None, 30, "the report to be delivered")
    finally:
        adapter.stop()
        await asyncio.wait_for(run, 30)
    assert execution(running_cloud, job_id)["status"] == "SUCCEEDED"


# ---------------------------------------------------------------- cancel


async def test_a_force_cancel_stops_the_running_job(
    running_cloud: Cloud, adapters: AdapterFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    cleanup = tmp_path / "cleaned"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    job_id = execute(
        running_cloud,
        document(
            command_step([PY, "-c", code, str(pid_file)]),
            finalStep=command_step(["touch", str(cleanup)], "cleanup"),
        ),
    )
    adapter = adapters()
    run = in_background(adapter.run_until_idle())
    await until(lambda: pid_file.exists() and pid_file.read_text(), what="the step to start")
    pid = int(pid_file.read_text())
    with running_cloud.admin() as admin:
        canceled = admin.post(f"/api/v1/jobs/{job_id}/cancel", json={"force": True})
    assert canceled.status_code == 200, canceled.text
    assert await asyncio.wait_for(run, 60) == 1
    await until(lambda: gone(pid), 10, "the step's process to be killed")
    assert not cleanup.exists(), "an aborted job runs no final step"
    assert execution(running_cloud, job_id)["status"] == "CANCELED"
    [entry] = adapter.get_job_history()
    assert entry["status"] == "FAILED"
    assert entry["reason"].startswith("the cloud refused the job's progress update")
    assert entry["report"].startswith("refused: the execution is already CANCELED")


# ---------------------------------------------------------------- restarts


async def test_a_job_interrupted_by_a_restart_is_reported_failed(
    running_cloud: Cloud, adapters: AdapterFactory, tmp_path: Path
) -> None:
    job_id = execute(running_cloud, document(command_step(["sleep", "60"])))
    # The agent that died had claimed the job and started a step in its own group…
    async with JobsClient(running_cloud.jobs_url, running_cloud.device_token) as client:
        claimed = await client.next_job(running_cloud.device_id)
    assert claimed is not None
    assert claimed["job_id"] == job_id
    leftover = sleeper_in_its_own_group()
    try:
        data = tmp_path / "agent"
        data.mkdir(mode=0o700)
        group = {"pgid": leftover.pid, "boot": boot_id(), "ticks": start_ticks(leftover.pid)}
        CurrentJobFile(data / "current.json").save(
            CurrentJob(job_id, "test-job", RUNNING, "2026-01-01T00:00:00Z", [group])
        )
        # …and a new agent starts.
        adapter = adapters()
        assert await adapter.run_until_idle() == 0
        assert leftover.wait(10) == -signal.SIGKILL
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()
    done = execution(running_cloud, job_id)
    assert done["status"] == "FAILED"
    assert done["status_details"]["reason"] == RESTARTED
    [entry] = adapter.get_job_history()
    assert (entry["status"], entry["reason"]) == ("FAILED", RESTARTED)


async def test_an_execution_the_agent_never_received_is_failed(
    running_cloud: Cloud, adapters: AdapterFactory
) -> None:
    job_id = execute(running_cloud, document(command_step(["true"])))
    async with JobsClient(running_cloud.jobs_url, running_cloud.device_token) as client:
        assert await client.next_job(running_cloud.device_id) is not None  # answer lost
    second = execute(running_cloud, document(command_step(["echo", "next"])))
    assert await adapters().run_until_idle() == 1
    lost = execution(running_cloud, job_id)
    assert (lost["status"], lost["status_details"]["reason"]) == ("FAILED", LOST)
    assert execution(running_cloud, second)["status"] == "SUCCEEDED"


# ---------------------------------------------------------------- the contract


@pytest.mark.parametrize(
    "command", ["a,b", "a\\,b,c", "a\\\\,b", "x\\y,z", ",", "a,,b", "tail\\", "\\\\\\,"]
)
def test_the_agent_splits_commands_as_the_server_does(command: str) -> None:
    from fleetcloud.jobs.documents import split_commas

    assert split_command(command) == split_commas(command)


async def test_the_jobs_client_translates_errors(running_cloud: Cloud) -> None:
    from fleetcloud.agent.errors import CloudRefused, CloudUnreachable

    async with JobsClient(running_cloud.jobs_url, "not-a-key") as client:
        with pytest.raises(CloudRefused) as refused:
            await client.next_job(running_cloud.device_id)
        assert refused.value.status == 401
    async with JobsClient("http://127.0.0.1:9/api/v1", "k", timeout=2) as client:
        with pytest.raises(CloudUnreachable, match="cannot reach"):
            await client.next_job("1")
