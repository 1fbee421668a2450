"""Helpers the device-agent tests share (this module holds no tests of its own).

- ``Cloud``: a fleetcloud database with an organisation and one device, and a
  ``fleetcloud serve`` subprocess for it that tests start, kill and restart at will.
- ``AgentProcess``: ``fleetcloud agent`` as a real subprocess, with its environment.
- ``wait_until``: poll a condition against a deadline (no fixed sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.servers.fleetcloud import FLEETCLOUD, Server, cli_json
from tests.servers.postgres import free_port

T = TypeVar("T")


def wait_until(
    check: Callable[[], T], timeout: float = 30, what: str = "the condition", step: float = 0.05
) -> T:
    """Call ``check`` until it returns something truthy (returned), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


async def eventually(
    check: Callable[[], Any], timeout: float = 30, what: str = "the condition"
) -> Any:
    """``wait_until`` for async tests; ``check`` may return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Cloud:
    """A device in an organisation, and the server that holds them (not started)."""

    database: str
    organisation_id: str
    admin_token: str
    device_id: str
    device_token: str
    server: Server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def jobs_url(self) -> str:
        return f"{self.server.url}/api/v1"

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30
        )

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """The channel's history, oldest first."""
        with self.admin() as client:
            answer = client.get(
                f"/api/agents/{self.device_id}/channels/{channel}/messages",
                params={"limit": 1000},
            )
        if answer.status_code == 404:
            return []
        answer.raise_for_status()
        found: list[dict[str, Any]] = answer.json()
        return sorted(found, key=lambda m: int(m["id"]))

    def aggregate(self, channel: str) -> Any:
        with self.admin() as client:
            answer = client.get(f"/api/agents/{self.device_id}/channels/{channel}/aggregate")
        answer.raise_for_status()
        return answer.json()["data"]


@dataclass(frozen=True)
class Template:
    """A database made once per session (the CLI is slow to start); each test copies it."""

    path: Path
    organisation_id: str
    admin_token: str
    device_id: str
    device_token: str


@pytest.fixture(scope="session")
def cloud_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    path = tmp_path_factory.mktemp("cloud-template") / "cloud.db"
    database = f"sqlite:///{path}"
    organisation = cli_json("org", "create", "acme", "--database", database, "--json")
    device = cli_json(
        "device",
        "create",
        "pump-1",
        "--org",
        organisation["organisation_id"],
        "--database",
        database,
        "--json",
    )
    return Template(
        path,
        organisation["organisation_id"],
        organisation["token"],
        device["agent_id"],
        device["token"],
    )


def make_cloud(template: Template, directory: Path) -> Cloud:
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{template.path}{suffix}")
        if source.exists():
            shutil.copyfile(source, directory / f"cloud.db{suffix}")
    database = f"sqlite:///{directory / 'cloud.db'}"
    server = Server(database, log=directory / "server.log")
    return Cloud(
        database,
        template.organisation_id,
        template.admin_token,
        template.device_id,
        template.device_token,
        server,
    )


@pytest.fixture
def cloud(cloud_template: Template, tmp_path: Path) -> Iterator[Cloud]:
    made = make_cloud(cloud_template, tmp_path)
    try:
        yield made
    finally:
        made.server.stop()


@dataclass
class AgentProcess:
    """``fleetcloud agent`` in a subprocess; stdout and stderr go to files."""

    env: dict[str, str]
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def data_dir(self) -> Path:
        return Path(self.env["FLEETCLOUD_AGENT_DATA"])

    @property
    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout_path(self) -> Path:
        return self.directory / f"agent-{self.runs}.out"

    @property
    def stderr_path(self) -> Path:
        return self.directory / f"agent-{self.runs}.err"

    def start(self, ready: bool = True) -> None:
        self.runs += 1
        env = {
            **os.environ,
            "FLEETCLOUD_AGENT_LOCAL_API_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen([*FLEETCLOUD, "agent"], stdout=out, stderr=err, env=env)
        if ready:
            wait_until(self.answers, 30, "the agent's local API")

    def answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the agent exited early:\n{self.output()}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.local_url}/v2/device", timeout=1).status_code == 200
        return False

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def publish(self, channel: str, data: Any) -> httpx.Response:
        return httpx.post(f"{self.local_url}/v2/channels/{channel}/messages", json={"data": data})

    def signal(self, signum: int) -> None:
        if self.process is not None:
            self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        if self.process is None:
            return 0
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or a power cut."""
        self.signal(signal.SIGKILL)
        self.wait()

    def stop(self) -> None:
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Make agent subprocesses (stopped at the end of the test)."""
    made: list[AgentProcess] = []

    def make(**env: str) -> AgentProcess:
        number = len(made)
        data = tmp_path / f"agent-data-{number}"
        agent = AgentProcess(
            {"FLEETCLOUD_AGENT_DATA": str(data), **env}, tmp_path / f"agent-{number}"
        )
        agent.directory.mkdir()
        made.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in made:
            agent.stop()
