"""``fleetcloud serve --demo`` as a newcomer runs it: a real server process whose demo
deploys its processors through the apps runtime and runs a job agent. Stopped and
started again on the same database, it finds everything in place."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.postgres import free_port
from tests.test_console import FLEETCLOUD, read_banner, wait_for

pytestmark = pytest.mark.slow


@dataclass
class Running:
    url: str
    token: str
    devices: dict[str, str]
    process: subprocess.Popen[bytes]

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        answer = httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)
        answer.raise_for_status()
        return answer.json()


@contextlib.contextmanager
def serve_demo(directory: Path, log: Path) -> Iterator[Running]:
    port = free_port()
    database = f"sqlite:///{directory / 'demo.sqlite'}"
    environment = {**os.environ, "TMPDIR": str(directory / "tmp")}
    args = ["serve", "--port", str(port), "--database", database, "--demo"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*FLEETCLOUD, *args], stdout=out, stderr=subprocess.STDOUT, env=environment
        )
    try:
        banner = read_banner(log, process, timeout=30)
        token = re.search(r"admin token:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        listed = re.search(r"devices:\s+(.+)", banner).group(1)  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(url + "/healthz", timeout=1).raise_for_status(), 30)
        yield Running(url, token, dict(re.findall(r"([\w-]+) \((\d+)\)", listed)), process)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def installations(demo: Running) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = demo.api("GET", "/api/apps/installations")
    return found


def run_health_check(demo: Running) -> dict[str, Any]:
    body = {
        "job_name": "demo check",
        "template_id": "health-check",
        "target_type": "device",
        "target_devices": [demo.devices["weather-mast"]],
    }
    job = demo.api("POST", "/api/v1/jobs/execute", json=body)

    def finished() -> dict[str, Any]:
        found: dict[str, Any] = demo.api("GET", f"/api/v1/jobs/{job['job_id']}")
        assert found["status"] == "COMPLETED", found["counts"]
        return found

    return wait_for(finished, timeout=30)  # type: ignore[no-any-return]


def test_the_demo_survives_a_restart_without_duplicates(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with serve_demo(tmp_path, first_log) as demo:

        def installed() -> None:
            assert len(installations(demo)) == 2

        wait_for(installed, 30)
        assert run_health_check(demo)["counts"]["SUCCEEDED"] == 1
        demo.process.terminate()
        # uvicorn shuts down, then ends by the signal it was sent
        assert demo.process.wait(timeout=30) in (0, -signal.SIGTERM)
    text = first_log.read_text()
    assert "Application shutdown complete" in text
    assert "the server is stopping: stopping" in text  # the agent was asked, not killed
    assert "Traceback" not in text
    assert list((tmp_path / "tmp").glob("fleetcloud-demo-agent-*")) == []

    with serve_demo(tmp_path, second_log) as demo:
        found = installations(demo)
        assert sorted(i["app_key"] for i in found) == ["cold_room", "pump_controller"]
        apps = demo.api("GET", "/api/apps")
        assert {a["name"]: a["latest_version"] for a in apps} == {
            "cold_room": 1,
            "pump_controller": 1,
        }
        assert run_health_check(demo)["counts"]["SUCCEEDED"] == 1  # a fresh agent key
        agent_device = demo.devices["weather-mast"]
        history = demo.api("GET", f"/api/v1/devices/{agent_device}/jobs")
        assert [e["status"] for e in history] == ["SUCCEEDED", "SUCCEEDED"]
    assert "Traceback" not in second_log.read_text()
