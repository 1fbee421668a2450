"""The ``fleetcloud`` command line, run as a user runs it: in a subprocess, against a real
server on a free port."""

from __future__ import annotations

import contextlib
import json
import queue
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
import pytest
from click.testing import CliRunner

from fleetcloud.cli import main
from tests.servers.fleetcloud import FLEETCLOUD, Server, cli, cli_json, running_server
from tests.servers.postgres import free_port

T = TypeVar("T")


@dataclass
class Tenant:
    server: Server
    organisation: dict[str, str]  # what `org create --json` printed
    device: dict[str, str]  # what `device create --json` printed

    def client(self, token: str | None = None) -> list[str]:
        return ["--url", self.server.url, "--token", token or self.organisation["token"]]


def create_tenant(database: str) -> tuple[dict[str, str], dict[str, str]]:
    organisation = cli_json("org", "create", "acme", "--database", database, "--json")
    org_id = organisation["organisation_id"]
    device = cli_json("device", "create", "d1", "--org", org_id, "--database", database, "--json")
    return organisation, device


@pytest.fixture(scope="module")
def tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenant]:
    database = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'db.sqlite'}"
    organisation, device = create_tenant(database)
    with running_server(database) as server:
        yield Tenant(server, organisation, device)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``fleetcloud`` whatever its exit status."""
    command = [*FLEETCLOUD, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def assert_clean_failure(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


def http_get(server_url: str, path: str, token: str) -> Any:
    response = httpx.get(server_url + path, headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    return response.json()


def eventually(check: Callable[[], T], timeout: float = 10.0) -> T:
    """``check()``'s result once it stops raising AssertionError, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, httpx.HTTPError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


# ---------------------------------------------------------------- help


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("path", list(command_paths(main)), ids=" ".join)
def test_help_describes_every_option(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="fleetcloud")
    assert result.exit_code == 0, result.output
    assert words(f"Usage: fleetcloud {' '.join(path)}") in words(result.output)
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert command.help
    assert words(command.help.split("\n\n")[0]) in words(result.output)
    for option in command.params:
        if isinstance(option, click.Option):
            assert option.help, f"{option.opts} has no help text"
            assert option.opts[0] in result.output
            assert words(option.help)[:40] in words(result.output)


def test_top_level_help_runs_as_a_program() -> None:
    output = cli("--help")
    assert output.startswith("Usage: fleetcloud [OPTIONS] COMMAND")
    for command in ("serve", "org", "device", "publish", "channels"):
        assert command in output


# ---------------------------------------------------------------- org and device


def test_org_create_prints_a_working_admin_token(tenant: Tenant) -> None:
    organisation = tenant.organisation
    assert set(organisation) == {"organisation_id", "agent_id", "token"}
    me = http_get(tenant.server.url, "/api/me", organisation["token"])
    assert me == {
        "agent_id": organisation["agent_id"],
        "organisation_id": organisation["organisation_id"],
        "role": "admin",
    }


def test_device_create_prints_a_working_device_token(tenant: Tenant) -> None:
    assert set(tenant.device) == {"agent_id", "token"}
    me = http_get(tenant.server.url, "/api/me", tenant.device["token"])
    assert me["agent_id"] == tenant.device["agent_id"]
    assert me["role"] == "device"


def test_device_create_for_a_missing_organisation_fails_cleanly(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    done = run_cli("device", "create", "d", "--org", "123", "--database", database)
    assert_clean_failure(done, "organisation 123 does not exist")


# ---------------------------------------------------------------- publish and channels


def latest_message(tenant: Tenant, channel: str) -> Any:
    path = f"/api/agents/{tenant.device['agent_id']}/channels/{channel}/messages?limit=1"
    return http_get(tenant.server.url, path, tenant.organisation["token"])[0]


def test_publish_with_options(tenant: Tenant) -> None:
    agent = tenant.device["agent_id"]
    printed = json.loads(cli("publish", agent, "pumps", '{"on": true}', *tenant.client()))
    assert latest_message(tenant, "pumps")["id"] == printed["id"]
    assert latest_message(tenant, "pumps")["data"] == {"on": True}


def test_publish_with_environment_variables(tenant: Tenant) -> None:
    env = {"FLEETCLOUD_URL": tenant.server.url, "FLEETCLOUD_TOKEN": tenant.device["token"]}
    cli("publish", tenant.device["agent_id"], "gps", '{"lat": -33.9}', env=env)
    assert latest_message(tenant, "gps")["data"] == {"lat": -33.9}


def test_publish_rejects_invalid_json(tenant: Tenant) -> None:
    done = run_cli("publish", tenant.device["agent_id"], "x", "{temp: 1", *tenant.client())
    assert_clean_failure(done, "not valid JSON")


def test_channels_lists_names_and_aggregates(tenant: Tenant) -> None:
    agent = tenant.device["agent_id"]
    cli("publish", agent, "tank", '{"level": 3, "unit": "m"}', *tenant.client())
    cli("publish", agent, "tank", '{"level": 4}', *tenant.client())
    lines = cli("channels", agent, *tenant.client()).splitlines()
    assert 'tank: {"level":4,"unit":"m"}' in lines
    assert cli("channels", agent, "--channel", "tank", *tenant.client()).splitlines() == [
        'tank: {"level":4,"unit":"m"}'
    ]


UNREACHABLE = ("cannot reach",)
BAD_TOKEN = ("token is not valid",)


@pytest.mark.parametrize("command", [["publish", "1", "x", "{}"], ["channels", "1"]])
def test_client_commands_fail_cleanly(tenant: Tenant, command: list[str]) -> None:
    nowhere = ["--url", f"http://127.0.0.1:{free_port()}", "--token", "t"]
    assert_clean_failure(run_cli(*command, *nowhere), *UNREACHABLE)
    assert_clean_failure(run_cli(*command, *tenant.client("not-a-token")), *BAD_TOKEN)


class Lines:
    """A running process's output (stdout and stderr), line by line, with deadlines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.queue: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.queue.put(line.rstrip())

    def rest(self) -> str:
        """Everything not read yet, once the process has ended."""
        self.process.wait(timeout=20)
        self.reader.join(timeout=10)
        return "\n".join(self.queue.get_nowait() for _ in range(self.queue.qsize()))

    def until(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> list[str]:
        """Lines read until one satisfies ``predicate`` (that one included)."""
        deadline, seen = time.monotonic() + timeout, list[str]()
        while not seen or not predicate(seen[-1]):
            try:
                seen.append(self.queue.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                raise AssertionError(f"no such line within {timeout} s; got {seen}") from None
        return seen


@contextlib.contextmanager
def background(*args: str) -> Iterator[Lines]:
    process = subprocess.Popen(
        [*FLEETCLOUD, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = Lines(process)
    try:
        yield lines
    finally:
        process.terminate()
        process.wait(timeout=20)
        lines.reader.join(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def test_channels_tail_follows_live_messages(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    organisation, device = create_tenant(database)
    with running_server(database) as server:
        tenant = Tenant(server, organisation, device)
        agent = device["agent_id"]
        cli("publish", agent, "live", '{"n": 0}', *tenant.client())
        url = server.url + "/"  # as users often type it
        tail = ["channels", agent, "--tail", "--channel", "live", "--url", url]
        with background(*tail, "--token", organisation["token"]) as lines:
            assert lines.until(bool) == ['live: {"n":0}']

            def warm_up() -> None:  # until the subscription is live
                cli("publish", agent, "live", '{"warm": true}', *tenant.client())
                lines.until(lambda line: "warm" in line, timeout=0.5)

            eventually(warm_up)
            for n in (1, 2, 3):
                cli("publish", agent, "live", json.dumps({"n": n}), *tenant.client())
            seen = lines.until(lambda line: line.endswith('aggregate: {"n":3,"warm":true}'))
            server.stop()
            assert lines.process.wait(timeout=10) != 0
            rest = lines.rest()
    assert "Traceback" not in rest
    assert "Error: lost the connection" in rest
    messages = [line for line in seen if " message " in line]
    assert [line.rsplit(": ", 1)[1] for line in messages][-3:] == ['{"n":1}', '{"n":2}', '{"n":3}']
    assert all(line.startswith("[live] ") for line in seen)


# ---------------------------------------------------------------- serve


@contextlib.contextmanager
def serving(database: str, *flags: str) -> Iterator[tuple[str, Lines]]:
    """``fleetcloud serve`` exactly as given (no implied ``--no-demo``), and its output."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with background("serve", "--port", str(port), "--database", database, *flags) as lines:
        eventually(lambda: httpx.get(f"{url}/healthz").raise_for_status(), timeout=30)
        yield url, lines


def sensors(url: str, token: str) -> list[Any]:
    devices = http_get(url, "/api/agents?kind=device", token)
    assert len(devices) == 3
    path = "/api/agents/{}/channels/sensors/aggregate"
    return [http_get(url, path.format(d["id"]), token)["data"] for d in devices]


@pytest.mark.parametrize("flags", [("--demo",), ()], ids=["--demo", "new-database"])
def test_serve_demo_simulates_devices(tmp_path: Path, flags: tuple[str, ...]) -> None:
    with serving(f"sqlite:///{tmp_path / 'new.sqlite'}", *flags) as (url, lines):
        banner = lines.until(lambda line: "admin token:" in line)
        assert any(url in line for line in banner)
        token = banner[-1].split()[-1]
        first = eventually(lambda: sensors(url, token))
        assert all({"temperature", "humidity", "battery"} <= set(data) for data in first)

        def changed() -> None:
            assert all(a != b for a, b in zip(first, sensors(url, token), strict=True))

        eventually(changed, timeout=8)


def test_serve_on_an_existing_database_creates_no_demo(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    create_tenant(f"sqlite:///{path}")
    with serving(f"sqlite:///{path}") as (_, lines):
        pass
    assert "demo" not in lines.rest()
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = [row[0] for row in db.execute("SELECT name FROM organisations")]
    assert names == ["acme"]
