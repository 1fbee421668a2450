"""The agent's local API as device apps read and patch through it: aggregates proxied to
a real cloud, kept on disk for offline starts, with the writes still queued merged on
top; aggregate patches queued and forwarded in order with messages."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcloud.agent.cloud import DataClient
from fleetcloud.agent.credentials import Credentials
from fleetcloud.agent.forwarder import Forwarder
from fleetcloud.agent.local_api import LocalState, create_local_app
from fleetcloud.agent.queue import MessageQueue
from tests.test_agent_support import Cloud, cloud, cloud_template

__all__ = ["cloud", "cloud_template"]  # fixtures used here


def credentials_of(cloud: Cloud) -> Credentials:
    return Credentials(cloud.device_id, cloud.device_token, cloud.device_id, "environment")


class Local:
    """A local API (in-process, over ASGI) with its own queue file, like one agent run."""

    def __init__(self, state: LocalState, client: httpx.AsyncClient) -> None:
        self.state = state
        self.client = client

    async def read(self, channel: str) -> httpx.Response:
        return await self.client.get(f"/v2/channels/{channel}/aggregate")

    async def patch(self, channel: str, body: Any, replace: str | None = None) -> httpx.Response:
        params = {"replace": replace} if replace else None
        return await self.client.patch(
            f"/v2/channels/{channel}/aggregate", json=body, params=params
        )

    async def publish(self, channel: str, data: Any) -> httpx.Response:
        return await self.client.post(f"/v2/channels/{channel}/messages", json={"data": data})

    async def forward(self, cloud: Cloud) -> int:
        client = DataClient(cloud.url, cloud.device_token, timeout=5)
        try:
            return await Forwarder(self.state.queue, client, cloud.device_id).drain()
        finally:
            await client.aclose()


@pytest.fixture
def open_local(tmp_path: Path, cloud: Cloud) -> Any:
    """``async with open_local() as local``: a fresh agent run on the same data directory."""

    @contextlib.asynccontextmanager
    async def run(provisioned: bool = True) -> AsyncIterator[Local]:
        async with MessageQueue(tmp_path / "outbox.db") as queue:
            state = LocalState(queue, cloud.jobs_url)
            state.reader().retry_seconds = 0  # ask the cloud at every read
            state.credentials = credentials_of(cloud) if provisioned else None
            transport = httpx.ASGITransport(app=create_local_app(state))
            async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
                try:
                    yield Local(state, client)
                finally:
                    await state.aclose()

    return run


async def test_reads_come_from_the_cloud_and_later_from_the_agents_copy(
    cloud: Cloud, open_local: Any
) -> None:
    cloud.server.start()
    with cloud.admin() as admin:
        admin.patch(
            f"/api/agents/{cloud.device_id}/channels/deployment_config/aggregate",
            json={"applications": {"pump": {"start_level": 70}}},
        ).raise_for_status()
    async with open_local() as local:
        answer = await local.read("deployment_config")
        assert answer.status_code == 200
        assert answer.json()["source"] == "cloud"
        assert answer.json()["data"] == {"applications": {"pump": {"start_level": 70}}}
        missing = await local.read("never/written")
        assert missing.status_code == 404
        assert "does not exist" in missing.json()["message"]
    cloud.server.stop()
    async with open_local() as local:  # the agent restarted; the cloud is away
        answer = await local.read("deployment_config")
        assert answer.status_code == 200
        assert answer.json()["source"] == "cache"
        assert answer.json()["data"] == {"applications": {"pump": {"start_level": 70}}}
        unknown = await local.read("never/written")
        assert unknown.status_code == 503
        assert "keeps no copy" in unknown.json()["message"]


async def test_an_app_reads_its_own_queued_writes_while_the_cloud_is_away(
    cloud: Cloud, open_local: Any
) -> None:
    cloud.server.start()
    async with open_local() as local:
        assert (
            await local.publish("tag_values", {"pump": {"level": 10, "mode": "auto"}})
        ).status_code == 202
        await local.forward(cloud)
        assert (await local.read("tag_values")).json()["data"] == {
            "pump": {"level": 10, "mode": "auto"}
        }
    cloud.server.stop()
    async with open_local() as local:
        await local.publish("tag_values", {"pump": {"level": 11, "mode": None}})
        await local.patch("ui_state", {"state": {"children": {"pump": {"name": "pump"}}}})
        await local.patch(
            "ui_state",
            {"state": {"children": {"pump": {"name": "pump", "v": 2}}}},
            replace="state.children.pump",
        )
        tags = (await local.read("tag_values")).json()
        assert tags["data"] == {"pump": {"level": 11}}
        assert (tags["source"], tags["pending"]) == ("cache", 1)
        ui = (await local.read("ui_state")).json()
        assert ui["data"] == {"state": {"children": {"pump": {"name": "pump", "v": 2}}}}
        assert (ui["source"], ui["pending"]) == ("none", 2)  # never read from the cloud
    cloud.server.start()
    async with open_local() as local:
        assert await local.forward(cloud) == 3
        tags = (await local.read("tag_values")).json()
        assert (tags["data"], tags["source"], tags["pending"]) == (
            {"pump": {"level": 11}},
            "cloud",
            0,
        )
    assert cloud.aggregate("ui_state") == {
        "state": {"children": {"pump": {"name": "pump", "v": 2}}}
    }


async def test_patches_and_messages_reach_the_cloud_in_the_order_they_were_queued(
    cloud: Cloud, open_local: Any
) -> None:
    async with open_local() as local:
        await local.publish("mixed", {"n": 1, "keep": True})
        await local.patch("mixed", {"n": 2, "sub": {"a": 1, "b": 1}})
        await local.patch("mixed", {"sub": {"c": 1}}, replace="sub")
        await local.publish("mixed", {"n": 3})
        await local.patch("mixed", {"keep": None})
        cloud.server.start()
        assert await local.forward(cloud) == 5
        assert (await local.read("mixed")).json()["pending"] == 0
    assert cloud.aggregate("mixed") == {"n": 3, "sub": {"c": 1}}
    assert [m["data"] for m in cloud.messages("mixed")] == [{"n": 1, "keep": True}, {"n": 3}]


async def test_bad_patches_are_refused_clearly(cloud: Cloud, open_local: Any) -> None:
    async with open_local(provisioned=False) as local:
        bad_path = await local.patch("c", {"a": 1}, replace="a..b")
        assert bad_path.status_code == 400
        assert "dotted path" in bad_path.json()["message"]
        not_json = await local.client.patch(
            "/v2/channels/c/aggregate",
            content=b"{oops",
            headers={"Content-Type": "application/json"},
        )
        assert not_json.status_code == 400
        assert local.state.queue.count == 0
        # An unprovisioned agent already takes patches (and reads its own).
        assert (await local.patch("c", {"a": 1})).status_code == 202
        assert (await local.read("c")).json() == {
            "data": {"a": 1},
            "attachments": [],
            "last_updated": None,
            "source": "none",
            "pending": 1,
        }


async def test_a_queue_written_by_an_older_agent_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with sqlite3.connect(path) as db:  # the first release's layout, with one message waiting
        db.executescript(
            "CREATE TABLE queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL,"
            " data BLOB NOT NULL, message_id INTEGER NOT NULL, enqueued_ms INTEGER NOT NULL);"
            "CREATE TABLE rejected (seq INTEGER PRIMARY KEY, channel TEXT NOT NULL, data BLOB"
            " NOT NULL, message_id INTEGER NOT NULL, error TEXT NOT NULL, rejected_ms INTEGER"
            " NOT NULL);"
            "INSERT INTO queue VALUES (1, 'old', CAST('{\"n\":1}' AS BLOB), 912249145794203648, 0);"
        )
    db.close()
    async with MessageQueue(path) as queue:
        await queue.put_patch("old", {"n": 2})
        waiting = await queue.peek(10, 1 << 20)
        assert [(m.kind, m.item("7")) for m in waiting] == [
            (
                "message",
                {
                    "agent_id": "7",
                    "channel_name": "old",
                    "data": {"n": 1},
                    "message_id": "912249145794203648",
                },
            ),
            ("patch", {"agent_id": "7", "channel_name": "old", "data": {"n": 2}}),
        ]
        await queue.reject({1: "refused"}, waiting[:1])
