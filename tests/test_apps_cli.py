"""``fleetcloud app …`` against a real ``fleetcloud serve`` (a subprocess) with real
workers: scaffold, build, deploy, install, invoke, logs; a zip in the seed's ``build.sh``
layout; and apps that misbehave in every way, which leave the server serving."""

from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.fleetcloud import FLEETCLOUD, Server, cli_json, running_server
from tests.test_apps_kit import PROBE, PROBE_SCHEMA, doover_config

pytestmark = pytest.mark.slow


@dataclass
class World:
    server: Server
    token: str
    organisation_id: str
    organisation_agent: str
    device_id: str
    tmp: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "FLEETCLOUD_URL": self.server.url, "FLEETCLOUD_TOKEN": self.token}

    def app(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*FLEETCLOUD, "app", *args],
            capture_output=True,
            text=True,
            timeout=90,
            env=self.env(),
            cwd=self.tmp,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"fleetcloud app {' '.join(args)} failed:\n{done.stderr}")
        return done

    def app_json(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.app(*args, "--json").stdout)
        return result

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("apps-cli")
    database = f"sqlite:///{tmp / 'db.sqlite'}"
    org = cli_json("org", "create", "acme", "--database", database, "--json")
    device = cli_json(
        "device",
        "create",
        "pump-7",
        "--org",
        org["organisation_id"],
        "--database",
        database,
        "--json",
    )
    with pytest.MonkeyPatch.context() as env:  # the server subprocess inherits these
        env.setenv("FLEETCLOUD_APPS_CACHE_DIR", str(tmp / "cache"))
        env.setenv("FLEETCLOUD_APPS_RETRIES", "0")
        with running_server(database) as server:
            yield World(
                server,
                org["token"],
                org["organisation_id"],
                org["agent_id"],
                device["agent_id"],
                tmp,
            )


def eventually(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(0.2)


def test_new_build_deploy_install_invoke_and_logs(world: World) -> None:
    world.app("new", "tank-watch", "--type", "processor", "--dir", str(world.tmp))
    project = world.tmp / "tank-watch"
    assert (project / "src" / "tank_watch" / "app_ui.py").exists()
    built = world.app("build", str(project))
    assert "package.zip" in built.stdout
    with zipfile.ZipFile(project / "package.zip") as archive:
        assert "src/tank_watch/__init__.py" in archive.namelist()

    app = world.app_json("deploy", str(project))
    assert app["name"] == "tank_watch"
    config = json.dumps({"dv_proc_subscriptions": ["tank_level"]})
    installed = world.app_json(
        "install", app["app_id"], "--agent", world.device_id, "--config", config
    )
    installation = installed["installation_id"]

    with world.http() as http:
        published = http.post(
            f"/api/agents/{world.device_id}/channels/tank_level/messages",
            json={"data": {"pct": 40}},
        )
        assert published.status_code == 200

        def tags() -> Any:
            found = http.get(f"/api/agents/{world.device_id}/channels/tag_values/aggregate")
            return found.status_code == 200 and found.json()["data"].get("tank_watch")

        assert eventually(tags) == {"messages": 1}

    invoked = world.app("invoke", installation, "--payload", '{"why": "a test"}')
    assert " SKIPPED on_manual_invoke attempt 1 " in invoked.stdout  # it has no such handler
    logs = world.app("logs", installation).stdout
    assert " SKIPPED on_deployment " in logs
    assert " OK on_message_create attempt 1 " in logs
    as_json = [
        json.loads(line) for line in world.app("logs", installation, "--json").stdout.splitlines()
    ]
    assert [entry["handler"] for entry in as_json] == [
        "on_deployment",
        "on_message_create",
        "on_manual_invoke",
    ]


def test_logs_follow_prints_new_invocations_as_they_happen(world: World) -> None:
    installation = probe_installation(world)
    follower = subprocess.Popen(
        [*FLEETCLOUD, "app", "logs", installation, "--follow", "--limit", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=world.env(),
    )
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()  # the latest invocation so far
        assert " on_" in first
        world.app("invoke", installation, "--payload", '{"note": "followed"}')
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = follower.stdout.readline()
            lines.append(line)
            if " OK on_manual_invoke " in line:
                break
        assert " OK on_manual_invoke " in lines[-1], lines
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        if follower.stdout is not None:
            follower.stdout.close()
        if follower.stderr is not None:
            follower.stderr.close()


def test_an_install_with_a_bad_config_says_what_is_wrong(world: World) -> None:
    project = world.tmp / "probe-app"
    write_project(project, "probe", {"src/probe/__init__.py": PROBE}, schema=PROBE_SCHEMA)
    app = world.app_json("deploy", str(project))
    bad = json.dumps({"dv_proc_subscriptions": "sensor_data", "label": "x" * 30})
    done = world.app(
        "install", app["app_id"], "--agent", world.device_id, "--config", bad, check=False
    )
    assert done.returncode == 1
    assert "does not match probe's config schema" in done.stderr
    assert "dv_proc_subscriptions: 'sensor_data' is not of type 'array', 'null'" in done.stderr
    assert "label: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' is too long" in done.stderr
    on_org = world.app("install", app["app_id"], "--agent", world.organisation_agent, check=False)
    assert on_org.returncode == 1
    assert "probe is a processor: it is installed on device agents" in on_org.stderr
    schedule = json.dumps({"dv_proc_schedules": "cron(0 9 * * *)"})
    done = world.app(
        "install", app["app_id"], "--agent", world.device_id, "--config", schedule, check=False
    )
    assert done.returncode == 1
    assert "dv_proc_schedules" in done.stderr


def write_project(project: Path, name: str, files: dict[str, str | bytes], **options: Any) -> None:
    """A project directory with ``package.zip`` written as the seed's build.sh lays it out:
    the installed dependencies at the root (as ``zip -r`` of packages_export/ gives them),
    then ``src/`` with its directory entries."""
    project.mkdir(parents=True, exist_ok=True)
    (project / "doover_config.json").write_text(json.dumps(doover_config(name, **options)))
    with zipfile.ZipFile(project / "package.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path, content in files.items():
            parents = Path(path).parents
            for directory in reversed([p for p in parents if str(p) != "."]):
                if f"{directory.as_posix()}/" not in archive.namelist():
                    archive.writestr(f"{directory.as_posix()}/", "")
            archive.writestr(path, content)


SEED_APP = """
import tinydep
from fleetcloud.sdk.processor import Application, run_app


class SeedApp(Application):
    async def on_manual_invoke(self, event):
        await self.set_tag("answer", tinydep.answer())


def handler(event, context):
    run_app(SeedApp(), event, context)
"""


def test_a_zip_made_by_the_seeds_build_script_is_accepted(world: World) -> None:
    project = world.tmp / "seed-layout"
    files: dict[str, str | bytes] = {
        ".lock": "",
        "tinydep/__init__.py": "def answer():\n    return 42\n",
        "tinydep-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinydep\nVersion: 1.0\n",
        "src/seed_app/__init__.py": SEED_APP,
    }
    write_project(project, "seed_app", files)
    app = world.app_json("deploy", str(project))
    installed = world.app_json("install", app["app_id"], "--agent", world.device_id)
    invoked = world.app("invoke", installed["installation_id"])
    assert " OK on_manual_invoke " in invoked.stdout
    with world.http() as http:
        tags = http.get(f"/api/agents/{world.device_id}/channels/tag_values/aggregate").json()
    assert tags["data"]["seed_app"] == {"answer": 42}


@pytest.mark.parametrize(
    ("behaviour", "status", "error"),
    [
        ("raise", "ERROR", "RuntimeError: asked to fail"),
        ("exit", "ERROR", "SystemExit: 3"),
        ("crash", "FAILED", "the worker exited with code 7"),
        ("segfault", "FAILED", "the worker was killed by SIGSEGV"),
        ("sigsegv", "FAILED", "the worker was killed by SIGSEGV"),
        ("hang", "TIMED_OUT", "timed out after 2 s: the worker was stopped"),
        ("hog", "FAILED", "ran out of memory (MemorySize 128 MB): MemoryError"),
        ("garbage", "OK", None),
    ],
)
def test_a_misbehaving_app_costs_one_invocation(
    world: World, behaviour: str, status: str, error: str | None
) -> None:
    installation = probe_installation(world)
    before = worker_pid(world, installation)
    payload = json.dumps({"do": behaviour})
    done = world.app("invoke", installation, "--payload", payload, "--json", check=False)
    invocation = json.loads(done.stdout)["invocation"]
    assert invocation["status"] == status
    assert done.returncode == (0 if status == "OK" else 1)
    if error is None:
        assert invocation["error"] is None
        assert "not a frame" in invocation["logs"]
    else:
        assert invocation["error"].startswith(error)
    if behaviour in ("segfault", "sigsegv"):
        assert "Fatal Python error: Segmentation fault" in invocation["logs"]
    with world.http() as http:
        assert http.get("/healthz").status_code == 200
        channel = f"dv-proc-inv-{invocation['app_id']}"
        summary = http.get(
            f"/api/agents/{world.device_id}/channels/{channel}/messages", params={"limit": 1}
        )
    assert summary.status_code == 200
    recorded = summary.json()[0]["data"]  # the newest summary
    assert (recorded["event_id"], recorded["status"]) == (invocation["event_id"], status)
    assert recorded["error"] == invocation["error"]
    after = worker_pid(world, installation)  # the next invocation succeeds …
    if status in ("FAILED", "TIMED_OUT"):  # … in a new worker if that one died or was killed
        assert after != before
    else:  # a raise or sys.exit is reported by a worker that stays warm
        assert after == before


def test_an_event_that_failed_every_attempt_is_a_dead_letter(world: World) -> None:
    """Retries are off for this server (``FLEETCLOUD_APPS_RETRIES=0``): one failed attempt
    and the event is kept, listed by ``app dead-letters`` and queued again on request."""
    installation = probe_installation(world)
    done = world.app("invoke", installation, "--payload", '{"do": "raise"}', "--json", check=False)
    event_id = json.loads(done.stdout)["invocation"]["event_id"]
    letters = json.loads(world.app("dead-letters", installation, "--json").stdout)
    [letter] = [d for d in letters if d["event_id"] == event_id]
    assert (letter["handler"], letter["attempts"]) == ("on_manual_invoke", 1)
    assert letter["error"] == "RuntimeError: asked to fail"
    assert letter["event"]["payload"] == {"do": "raise"}
    text = world.app("dead-letters", installation).stdout
    assert f"on_manual_invoke event {event_id} after 1 attempts: RuntimeError" in text
    with world.http() as http:
        base = f"/api/apps/installations/{installation}/dead-letters"
        assert http.post(f"{base}/{letter['id']}/retry").status_code == 202

        def attempts() -> list[dict[str, Any]]:
            found = http.get(
                f"/api/apps/installations/{installation}/invocations", params={"event_id": event_id}
            ).json()
            return found if len(found) == 2 else []

        assert [i["status"] for i in eventually(attempts)] == ["ERROR", "ERROR"]


def worker_pid(world: World, installation: str) -> int:
    """Invoke the probe, which behaves, and say which worker process ran it."""
    done = world.app("invoke", installation, "--payload", '{"do": "nothing"}', "--json")
    invocation = json.loads(done.stdout)["invocation"]
    assert invocation["status"] == "OK"
    return int(invocation["logs"].split("worker ", 1)[1].split()[0])


_probe: dict[str, str] = {}


def probe_installation(world: World) -> str:
    """One probe (Timeout 2 s, MemorySize 128 MB) shared by the misbehaviour tests."""
    if "installation" not in _probe:
        project = world.tmp / "probe-limits"
        write_project(project, "limits", {"src/limits/__init__.py": PROBE}, timeout=2)
        app = world.app_json("deploy", str(project))
        installed = world.app_json("install", app["app_id"], "--agent", world.device_id)
        _probe["installation"] = installed["installation_id"]
    return _probe["installation"]
