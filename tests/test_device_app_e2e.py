"""End to end: the example device app (examples/device_app) as a real process, publishing
through a real ``fleetcloud agent`` to a real ``fleetcloud serve`` — which goes away for
a while, as does the agent — and nothing is lost: the cloud's history holds every reading,
once, in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_agent_support import AgentProcess, Cloud, agents, cloud, cloud_template, wait_until

__all__ = ["agents", "cloud", "cloud_template"]  # fixtures used here

pytestmark = pytest.mark.slow

EXAMPLE_SRC = Path(__file__).parents[1] / "examples" / "device_app" / "src"
APP_KEY = "pump"
READINGS = "sensors/tank"


class AppProcess:
    """``python -m pump_controller`` next to an agent; its log goes to a file."""

    def __init__(self, agent: AgentProcess, log: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(EXAMPLE_SRC),
            "APP_KEY": APP_KEY,
            "FLEETCLOUD_AGENT_URL": agent.local_url,
            "PYTHONUNBUFFERED": "1",
        }
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pump_controller"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def running(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the app exited early:\n{self.log.read_text()}")
        return True

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def app_process(tmp_path: Path) -> Iterator[Callable[[AgentProcess], AppProcess]]:
    made: list[AppProcess] = []

    def start(agent: AgentProcess) -> AppProcess:
        made.append(AppProcess(agent, tmp_path / f"app-{len(made)}.log"))
        return made[-1]

    try:
        yield start
    finally:
        for app in made:
            app.kill()


def pending(agent: AgentProcess) -> int:
    answer = httpx.get(f"{agent.local_url}/v2/device", timeout=5).json()
    count: int = answer["queue"]["pending"]
    return count


def tags(cloud: Cloud) -> dict[str, Any]:
    found: dict[str, Any] = cloud.aggregate("tag_values").get(APP_KEY, {})
    return found


def readings(cloud: Cloud) -> list[dict[str, Any]]:
    return [m["data"] for m in cloud.messages(READINGS)]


def test_the_example_app_loses_nothing_through_cloud_and_agent_outages(
    cloud: Cloud,
    agents: Callable[..., AgentProcess],
    app_process: Callable[[AgentProcess], AppProcess],
) -> None:
    cloud.server.start()
    with cloud.admin() as admin:
        admin.patch(
            f"/api/agents/{cloud.device_id}/channels/deployment_config/aggregate",
            json={"applications": {APP_KEY: {"loop_period": 0.1, "inflow_rate": 2}}},
        ).raise_for_status()
    agent = agents(
        DEVICE_UUID=cloud.device_id,
        DEVICE_API_KEY=cloud.device_token,
        CLOUD_API_URL=cloud.jobs_url,
        FLEETCLOUD_AGENT_BACKOFF_BASE="0.05",
        FLEETCLOUD_AGENT_BACKOFF_MAX="0.3",
    )
    agent.start()
    app = app_process(agent)

    # The app runs with its deployed config: readings, tags and its UI reach the cloud.
    wait_until(lambda: app.running() and len(readings(cloud)) >= 10, 30, "readings in the cloud")
    ui = cloud.aggregate("ui_state")["state"]["children"][APP_KEY]
    assert ui["displayString"] == "Pump Controller"
    assert ui["children"]["start"]["cmdKey"] == f"{APP_KEY}_start"

    # An operator presses Start in the console.
    with cloud.admin() as admin:
        admin.post(
            f"/api/agents/{cloud.device_id}/channels/ui_cmds/messages",
            json={"data": {f"{APP_KEY}_start": True}},
        ).raise_for_status()
    wait_until(lambda: tags(cloud).get("mode") == "manual", 30, "the app to take the command")
    wait_until(lambda: f"{APP_KEY}_start" not in cloud.aggregate("ui_cmds"), 30, "the release")

    # The cloud goes away; the app goes on, its readings wait in the agent's queue.
    online = len(readings(cloud))
    cloud.server.stop()
    wait_until(lambda: app.running() and pending(agent) >= 30, 30, "readings queued offline")

    # The agent restarts too (a clean stop); the app waits for it and carries on.
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    agent.start()
    queued = pending(agent)
    wait_until(lambda: app.running() and pending(agent) >= queued + 10, 30, "more readings")

    # The cloud comes back: everything arrives. The app stops cleanly.
    cloud.server.start()
    wait_until(lambda: pending(agent) < 5, 60, "the queue to drain")
    assert app.stop() == 0
    wait_until(lambda: pending(agent) == 0, 30, "the last writes")

    history = readings(cloud)
    assert [r["seq"] for r in history] == list(range(len(history))), "none lost, none twice"
    assert len(history) >= online + 10, "readings made while the cloud was away arrived"
    assert tags(cloud)["readings"] == len(history)
    after_start = [r for r in history if r["mode"] == "manual"]
    assert after_start
    assert all(r["pump_on"] for r in after_start)
    log = app.log.read_text()
    assert "Operator started the pump" in log
    assert "does not answer" in log  # the agent's restart, logged once, no traceback
    assert "Traceback" not in log
