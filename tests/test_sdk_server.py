"""The production transport: an app run by ``run_app`` against a real ``fleetcloud serve``,
over HTTP, with a device token as the invocation's token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fleetcloud.sdk import ui
from fleetcloud.sdk.envelope import build_envelope
from fleetcloud.sdk.processor import Application, ConnectionStatus, run_app
from tests.servers.fleetcloud import Server, cli_json, running_server

APP_KEY = "level_watch"


class LevelWatch(Application):
    async def setup(self) -> None:
        self.level = ui.NumericVariable("level", "Level", precision=1, units="%")
        self.alerts = ui.AlertStream()
        self.ui_manager.add_children(self.level, self.alerts)

    async def on_message_create(self, event: Any) -> None:
        data = event.message.data
        self.level.update(data["level"])
        readings = await self.get_tag("readings", 0)
        await self.set_tag("readings", readings + 1)
        await self.set_tag("last_level", data["level"])
        current = await self.api.get_aggregate(self.agent_id, "tank_level")
        await self.set_tag("aggregate_level", current.data["level"])
        await self.api.publish_message(self.agent_id, "tank/processed", {"pct": data["level"]})
        await self.ping_connection(connection_status=ConnectionStatus.continuous_online)
        if data["level"] > 90:
            await self.alerts.send_alert("Tank almost full")
        if data.get("forward_to"):
            peer = await self.get_device_agent(data["forward_to"])
            await self.api.publish_message(peer, "from_peer", data)


@dataclass
class World:
    server: Server
    admin: str
    organisation_id: str
    device_id: str
    device_token: str
    peer_id: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    database = f"sqlite:///{tmp_path_factory.mktemp('sdk') / 'db.sqlite'}"
    org = cli_json("org", "create", "acme", "--database", database, "--json")
    organisation = org["organisation_id"]
    device = cli_json(
        "device", "create", "tank-1", "--org", organisation, "--database", database, "--json"
    )
    peer = cli_json(
        "device", "create", "pump-2", "--org", organisation, "--database", database, "--json"
    )
    with running_server(database) as server:
        yield World(
            server,
            org["token"],
            organisation,
            device["agent_id"],
            device["token"],
            peer["agent_id"],
        )


def http(world: World, token: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=world.server.url, headers={"Authorization": f"Bearer {token or world.admin}"}
    )


def aggregate(world: World, channel: str) -> Any:
    with http(world) as client:
        response = client.get(f"/api/agents/{world.device_id}/channels/{channel}/aggregate")
    return response.json()["data"] if response.status_code == 200 else {}


def history(world: World, channel: str) -> list[Any]:
    with http(world) as client:
        response = client.get(f"/api/agents/{world.device_id}/channels/{channel}/messages")
    return [m["data"] for m in response.json()] if response.status_code == 200 else []


def message_event(world: World, data: dict[str, Any]) -> dict[str, Any]:
    """A device publishes ``data``; the envelope the runtime would build for it."""
    with http(world, world.device_token) as client:
        message = client.post(
            f"/api/agents/{world.device_id}/channels/tank_level/messages", json={"data": data}
        ).json()
    upgrade = {
        "agent_id": world.device_id,
        "organisation_id": world.organisation_id,
        "app_key": APP_KEY,
        "deployment_config": {},
        "ui_state": aggregate(world, "ui_state"),
        "ui_cmds": aggregate(world, "ui_cmds"),
        "tag_values": aggregate(world, "tag_values"),
        "connection_data": aggregate(world, "doover_connection"),
        "token": world.device_token,
        "api_url": world.server.url,
    }
    fields = {"message": message, "organisation_id": world.organisation_id, "event_id": "e-1"}
    return build_envelope("on_message_create", fields, upgrade)


def test_an_app_talks_to_a_real_server_over_http(world: World) -> None:
    summary = run_app(LevelWatch(), message_event(world, {"level": 95.04}), None)
    assert summary["status"] == "ok", summary
    assert summary["tags_flushed"] is True
    assert summary["ui_pushed"] is True

    assert aggregate(world, "tag_values") == {
        APP_KEY: {"readings": 1, "last_level": 95.04, "aggregate_level": 95.04}
    }
    assert len(history(world, "tag_values")) == 1  # one flush for two set_tag calls
    assert history(world, "tank/processed") == [{"pct": 95.04}]  # a "/" in the name
    app = aggregate(world, "ui_state")["state"]["children"][APP_KEY]
    assert app["type"] == "uiApplication"
    assert app["children"]["level"]["currentValue"] == 95.0
    assert app["children"]["significantEvent"]["type"] == "uiAlertStream"
    assert history(world, "significantEvent") == [
        {"message": "Tank almost full", "app_key": APP_KEY}
    ]
    assert aggregate(world, "doover_connection")["status"]["status"] == "ContinuousOnline"

    # the next invocation starts from what the server now holds
    with http(world) as client:
        before = client.get(f"/api/agents/{world.device_id}/channels/ui_state/aggregate").json()
    summary = run_app(LevelWatch(), message_event(world, {"level": 95.01}), None)
    assert summary["status"] == "ok", summary
    assert summary["ui_pushed"] is False  # 95.01 shows as 95.0 again: nothing to push
    with http(world) as client:
        after = client.get(f"/api/agents/{world.device_id}/channels/ui_state/aggregate").json()
    assert after["last_updated"] == before["last_updated"]
    assert aggregate(world, "tag_values")[APP_KEY]["readings"] == 2


def test_server_refusals_reach_the_app_as_fleetcloud_errors(world: World) -> None:
    event = message_event(world, {"level": 10, "forward_to": "pump-2"})
    summary = run_app(LevelWatch(), event, None)
    assert summary["status"] == "error"
    assert summary["error"] == (
        f"Forbidden: this token may not write to agent {world.peer_id}'s channels"
    )


def test_a_bad_token_is_unauthorized(world: World) -> None:
    event = message_event(world, {"level": 1})
    event["d"]["upgrade"]["token"] = "not-a-token"
    summary = run_app(LevelWatch(), event, None)
    assert summary["status"] == "error"
    assert summary["error"].startswith("Unauthorized: the token is not valid")
