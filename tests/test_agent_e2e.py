"""End to end: ``fleetcloud agent`` and ``fleetcloud serve`` as real subprocesses.

An operator registers an agent with a provisioning key and runs jobs on it; the agent
is stopped with SIGTERM during a job, killed with SIGKILL during one, loses the cloud
while reporting, and is misconfigured the ways the seed's troubleshooting lists.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.fleetcloud import cli, cli_json
from tests.test_agent_support import (
    AgentProcess,
    Cloud,
    agents,
    cloud,
    cloud_template,
    wait_until,
)

__all__ = ["agents", "cloud", "cloud_template"]  # fixtures used here

PY = sys.executable
Agents = Callable[..., AgentProcess]

FAST = {
    "ENABLE_CLOUD_JOBS": "true",
    "ENABLE_JOB_ENGINE": "true",
    "CLOUD_JOBS_POLLING_INTERVAL": "200",
    "CLOUD_JOBS_LONG_POLL": "2",
    "FLEETCLOUD_AGENT_BACKOFF_BASE": "0.1",
    "FLEETCLOUD_AGENT_BACKOFF_MAX": "0.5",
    "FLEETCLOUD_AGENT_STATUS_RETRIES": "100",
    "FLEETCLOUD_AGENT_KILL_SECONDS": "1",
}


def device_env(cloud: Cloud, **extra: str) -> dict[str, str]:
    return {
        **FAST,
        "CLOUD_API_URL": cloud.jobs_url,
        "DEVICE_UUID": cloud.device_id,
        "DEVICE_API_KEY": cloud.device_token,
        **extra,
    }


def waiting_step(directory: Path, say: str = "done") -> dict[str, Any]:
    """A step that writes its pid to ``started``, waits for the file ``go``, prints."""
    code = (
        "import os, pathlib, sys, time\n"
        "here = pathlib.Path(sys.argv[1])\n"
        "(here / 'started').write_text(str(os.getpid()))\n"
        "deadline = time.monotonic() + 100\n"
        "while not (here / 'go').exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "print(sys.argv[2])\n"
    )
    argv = [PY, "-c", code, str(directory), say]
    return {"action": {"name": "wait", "type": "runCommand", "input": {"command": argv}}}


def run_job(cloud: Cloud, step: dict[str, Any], device: str | None = None) -> str:
    body = {
        "job_name": "e2e",
        "job_document": {"version": "1.0", "includeStdOut": True, "steps": [step]},
        "target_type": "device",
        "target_devices": [device or cloud.device_id],
    }
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


def status_becomes(cloud: Cloud, job_id: str, status: str, timeout: float = 60) -> Any:
    return wait_until(
        lambda: (found := execution(cloud, job_id))["status"] == status and found,
        timeout,
        f"the execution to be {status}",
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    return state != "Z"


def step_pid(directory: Path) -> int:
    text = wait_until(
        lambda: (directory / "started").exists() and (directory / "started").read_text(),
        60,
        "the step to start",
    )
    return int(text)


# ---------------------------------------------------------------- the operator's story


def test_register_run_a_job_and_restart_with_the_kept_credentials(
    cloud: Cloud, agents: Agents, tmp_path: Path
) -> None:
    key = cli_json(
        "device", "provisioning-key", "create", "--org", cloud.organisation_id,
        "--database", cloud.database, "--json",
    )["provisioning_key"]  # fmt: skip
    cloud.server.start()
    agent = agents(**FAST, CLOUD_API_URL=cloud.jobs_url, PROVISIONING_KEY=key, DEVICE_NAME="pump-7")
    agent.start()
    device = wait_until(
        lambda: (d := httpx.get(f"{agent.local_url}/v2/device").json())["provisioned"] and d,
        30,
        "the agent to register",
    )
    uuid = device["uuid"]
    credentials = agent.data_dir / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(agent.data_dir.stat().st_mode) == 0o700
    wait_until(lambda: "Status: Polling for jobs..." in agent.output(), 30, "the banner")
    banner = agent.stdout_path.read_text()
    assert "☁️  Initializing Cloud Jobs Adapter...\n✅ Cloud Jobs Adapter initialized\n" in banner
    assert f"   Device UUID: {uuid}\n" in banner
    assert "   Polling interval: 200ms (0.2s)\n" in banner

    work = tmp_path / "job"
    work.mkdir()
    job_id = run_job(cloud, waiting_step(work, "hello from pump-7"), device=uuid)
    step_pid(work)
    assert execution(cloud, job_id)["status"] == "IN_PROGRESS"
    (work / "go").touch()
    done = status_becomes(cloud, job_id, "SUCCEEDED")
    assert done["stdout"] == "hello from pump-7\n"
    assert done["exit_code"] == 0

    data = str(agent.data_dir)
    status = json.loads(cli("agent", "status", "--data-dir", data, "--json"))
    assert status["running"]
    assert status["device_uuid"] == uuid
    assert status["live"]["polling"] is True
    lines = cli("agent", "history", "--data-dir", data, "--json").splitlines()
    history = [json.loads(line) for line in lines]
    assert [(h["job_id"], h["status"], h["report"]) for h in history] == [
        (job_id, "SUCCEEDED", "delivered")
    ]
    assert "SUCCEEDED  e2e" in cli("agent", "history", "--data-dir", data)

    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    assert not json.loads(cli("agent", "status", "--data-dir", data, "--json"))["running"]
    # The next start needs no provisioning key: the credentials are in the data directory.
    del agent.env["PROVISIONING_KEY"]
    agent.start()
    assert httpx.get(f"{agent.local_url}/v2/device").json()["uuid"] == uuid


# ---------------------------------------------------------------- stopping and crashing


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_lets_the_running_job_finish(
    cloud: Cloud, agents: Agents, tmp_path: Path, signum: signal.Signals
) -> None:
    cloud.server.start()
    agent = agents(**device_env(cloud, FLEETCLOUD_AGENT_GRACE_SECONDS="60"))
    agent.start()
    job_id = run_job(cloud, waiting_step(tmp_path, "finished anyway"))
    step_pid(tmp_path)
    agent.signal(signum)
    wait_until(lambda: f"{signum.name}: stopping" in agent.output(), 30, "the agent to stop")
    assert agent.process is not None
    assert agent.process.poll() is None, "the agent waits for the job"
    (tmp_path / "go").touch()
    assert agent.wait() == 0
    done = execution(cloud, job_id)
    assert (done["status"], done["stdout"]) == ("SUCCEEDED", "finished anyway\n")


def test_a_job_past_the_grace_period_is_stopped(
    cloud: Cloud, agents: Agents, tmp_path: Path
) -> None:
    cloud.server.start()
    agent = agents(**device_env(cloud, FLEETCLOUD_AGENT_GRACE_SECONDS="1"))
    agent.start()
    job_id = run_job(cloud, waiting_step(tmp_path))
    pid = step_pid(tmp_path)
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    assert not alive(pid)
    done = execution(cloud, job_id)
    assert done["status"] == "FAILED"
    assert done["status_details"]["reason"] == (
        "the agent stopped and the job did not finish within the 1 s grace period"
    )


def test_a_second_signal_aborts_the_job_at_once(
    cloud: Cloud, agents: Agents, tmp_path: Path
) -> None:
    cloud.server.start()
    agent = agents(**device_env(cloud, FLEETCLOUD_AGENT_GRACE_SECONDS="600"))
    agent.start()
    job_id = run_job(cloud, waiting_step(tmp_path))
    pid = step_pid(tmp_path)
    agent.signal(signal.SIGTERM)
    wait_until(lambda: "SIGTERM: stopping" in agent.output(), 30, "the agent to stop")
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    assert not alive(pid)
    done = execution(cloud, job_id)
    assert done["status"] == "FAILED"
    assert done["status_details"]["reason"] == "the agent was stopped (SIGTERM twice)"


def test_an_agent_killed_mid_job_reports_it_failed_when_it_restarts(
    cloud: Cloud, agents: Agents, tmp_path: Path
) -> None:
    cloud.server.start()
    agent = agents(**device_env(cloud))
    agent.start()
    job_id = run_job(cloud, waiting_step(tmp_path))
    pid = step_pid(tmp_path)
    agent.kill()
    assert alive(pid), "the step outlives the agent (it has its own session)"
    assert execution(cloud, job_id)["status"] == "IN_PROGRESS"
    agent.start()
    done = status_becomes(cloud, job_id, "FAILED")
    assert done["status_details"]["reason"] == "agent restarted during the job"
    wait_until(lambda: not alive(pid), 10, "the orphaned step to be killed")
    assert "FAILED" in cli("agent", "history", "--data-dir", str(agent.data_dir))
    # And the device takes the next job.
    other = tmp_path / "next"
    other.mkdir()
    (other / "go").touch()
    second = run_job(cloud, waiting_step(other, "next one"))
    assert status_becomes(cloud, second, "SUCCEEDED")["stdout"] == "next one\n"


def test_the_final_status_survives_a_network_failure(
    cloud: Cloud, agents: Agents, tmp_path: Path
) -> None:
    cloud.server.start()
    agent = agents(**device_env(cloud))
    agent.start()
    job_id = run_job(cloud, waiting_step(tmp_path, "reported late"))
    step_pid(tmp_path)
    cloud.server.kill()
    (tmp_path / "go").touch()
    wait_until(lambda: "Failed to update job status" in agent.output(), 60, "a failed update")
    cloud.server.start()
    done = status_becomes(cloud, job_id, "SUCCEEDED")
    assert done["stdout"] == "reported late\n"


# ---------------------------------------------------------------- troubleshooting


def test_without_credentials_the_device_uuid_is_not_available(cloud: Cloud, agents: Agents) -> None:
    agent = agents(**FAST, CLOUD_API_URL=cloud.jobs_url)
    agent.start(ready=False)
    assert agent.wait() == 2
    assert "Device UUID not available" in agent.output()


def test_cloud_jobs_without_the_job_engine(cloud: Cloud, agents: Agents) -> None:
    cloud.server.start()
    agent = agents(**device_env(cloud, ENABLE_JOB_ENGINE="false"))
    agent.start()
    wait_until(lambda: "Job Engine not enabled" in agent.output(), 30, "the error")
    assert httpx.get(f"{agent.local_url}/v2/device").json()["provisioned"] is True
    assert "Status: Polling for jobs..." not in agent.output()


def test_a_bad_setting_is_named(agents: Agents) -> None:
    agent = agents(CLOUD_JOBS_POLLING_INTERVAL="often", CLOUD_API_URL="http://x/api/v1")
    agent.start(ready=False)
    assert agent.wait() == 2
    assert "CLOUD_JOBS_POLLING_INTERVAL must be a whole number, not 'often'" in agent.output()
