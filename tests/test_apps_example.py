"""The Integration + Processor example (examples/integration_processor), end to end: a
signed webhook reaches the integration on a real ``fleetcloud serve``, which publishes to
the device's channel; the processor updates the device's UI and connection status."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.fleetcloud import FLEETCLOUD, cli_json, running_server

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[1] / "examples" / "integration_processor"
SIGNING_KEY = "example-signing-key"


def app(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [*FLEETCLOUD, "app", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def build(env: dict[str, str], project: Path) -> None:
    done = subprocess.run(
        [*FLEETCLOUD, "app", "build", str(project)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def load_sender(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("send_webhook", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_webhook_updates_the_devices_ui_through_integration_and_processor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = tmp_path / "example"
    shutil.copytree(EXAMPLE, example)
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
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
    monkeypatch.setenv("FLEETCLOUD_APPS_CACHE_DIR", str(tmp_path / "cache"))
    with running_server(database) as server:
        env = {**os.environ, "FLEETCLOUD_URL": server.url, "FLEETCLOUD_TOKEN": org["token"]}
        build(env, example / "webhook-integration")
        build(env, example / "device-processor")
        integration = app(env, "deploy", str(example / "webhook-integration"))
        processor = app(env, "deploy", str(example / "device-processor"))
        hook_config = {
            "dv_proc_ingestion": {"signing_key": SIGNING_KEY},
            "dv_proc_extended_permissions": {"devices": ["pump-7"]},
        }
        hook = app(env, "install", integration["app_id"], "--config", json.dumps(hook_config))
        subscriptions = json.dumps({"dv_proc_subscriptions": ["on_external_event"]})
        watcher = app(
            env,
            "install",
            processor["app_id"],
            "--agent",
            device["agent_id"],
            "--config",
            subscriptions,
        )

        sender = load_sender(example / "send_webhook.py")
        reading = {"device_id": "pump-7", "temperature": 21.46, "status": "running"}
        url = server.url + hook["ingestion_path"]
        refused = sender.send(url, hook["ingestion_token"], "not-the-key", reading)
        assert refused.status_code == 401
        accepted = sender.send(url, hook["ingestion_token"], SIGNING_KEY, reading)
        assert accepted.status_code == 202, accepted.text

        headers = {"Authorization": f"Bearer {org['token']}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            ui = wait_for_ui(http, device["agent_id"])
            assert ui["variant"] == "stacked"
            assert ui["children"]["temperature"]["currentValue"] == 21.5
            assert ui["children"]["status"]["currentValue"] == "running"
            # The processor pings the connection after pushing the UI, in a write of its own.
            connection = wait_for_aggregate(
                http, device["agent_id"], "doover_connection", lambda data: "status" in data
            )
            assert connection["status"]["status"] == "PeriodicUnknown"
            assert connection["status"]["determination"] == "Online"
            assert connection["config"]["connection_type"] == "Periodic"
            forwarded = http.get(
                f"/api/agents/{device['agent_id']}/channels/on_external_event/messages"
            ).json()
            assert [m["data"] for m in forwarded] == [reading]
            # The integration's tags are written when its invocation ends.
            tags = wait_for_aggregate(
                http, org["agent_id"], "tag_values", lambda data: "webhook_integration" in data
            )
            assert tags["webhook_integration"]["devices"] == {"pump-7": int(device["agent_id"])}
            for installation in (hook, watcher):
                path = f"/api/apps/installations/{installation['installation_id']}/invocations"
                log = http.get(path).json()
                assert {i["status"] for i in log} <= {"OK", "SKIPPED"}, log


def aggregate(http: httpx.Client, agent_id: str, channel: str) -> Any:
    response = http.get(f"/api/agents/{agent_id}/channels/{channel}/aggregate")
    return response.json()["data"] if response.status_code == 200 else {}


def wait_for_aggregate(
    http: httpx.Client, agent_id: str, channel: str, ready: Callable[[Any], bool]
) -> Any:
    deadline, data = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        data = aggregate(http, agent_id, channel)
        if ready(data):
            return data
        time.sleep(0.2)
    raise AssertionError(f"{channel} of agent {agent_id} still {data!r} after 60 s")


def wait_for_ui(http: httpx.Client, agent_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = aggregate(http, agent_id, "ui_state").get("state", {}).get("children", {})
        ui: dict[str, Any] | None = children.get("device_processor")
        if ui and "currentValue" in ui["children"]["status"]:
            return ui
        time.sleep(0.2)
    raise AssertionError("the processor did not update the device's UI within 60 s")
