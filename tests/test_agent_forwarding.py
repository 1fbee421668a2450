"""The agent's local API and store-and-forward: device apps publish through the agent;
nothing is lost or duplicated, and order is kept, while the cloud is down or the agent
restarts."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from fleetcloud.agent.cloud import DataClient
from fleetcloud.agent.credentials import Credentials
from fleetcloud.agent.errors import CloudUnreachable, QueueFull
from fleetcloud.agent.forwarder import Forwarder
from fleetcloud.agent.local_api import LocalState, create_local_app
from fleetcloud.agent.queue import MessageQueue, stats
from tests.test_agent_support import (
    AgentProcess,
    Cloud,
    agents,
    cloud,
    cloud_template,
    wait_until,
)

__all__ = ["agents", "cloud", "cloud_template"]  # fixtures used here


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[MessageQueue]:
    async with MessageQueue(tmp_path / "outbox.db", max_messages=5, max_bytes=4096) as opened:
        yield opened


# ---------------------------------------------------------------- the queue


async def test_the_queue_keeps_order_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    async with MessageQueue(path) as first:
        put = [await first.put("sensors/t", {"n": n}) for n in range(3)]
    async with MessageQueue(path) as second:
        assert second.count == 3
        more = await second.put("sensors/t", {"n": 3})
        waiting = await second.peek(10, 1 << 20)
    assert [m.seq for m in waiting] == [m.seq for m in [*put, more]]
    ids = [m.message_id for m in waiting]
    assert ids == sorted(ids), "ids grow across a restart"
    assert len(set(ids)) == 4
    assert stats(path) == {"pending": 4, "pending_bytes": 4 * len(b'{"n":0}'), "rejected": 0}


async def test_a_full_queue_refuses_more(queue: MessageQueue) -> None:
    for n in range(5):
        await queue.put("c", n)
    with pytest.raises(QueueFull, match="queue of messages for the cloud is full"):
        await queue.put("c", 5)
    waiting = await queue.peek(1, 1 << 20)
    await queue.remove(waiting)
    await queue.put("c", 6)  # room again


async def test_the_byte_bound_counts_too(queue: MessageQueue) -> None:
    with pytest.raises(QueueFull):
        await queue.put("c", "x" * 5000)
    assert queue.count == 0


async def test_a_message_timestamp_sets_its_id(queue: MessageQueue) -> None:
    from fleetcloud.core.ids import timestamp_ms

    message = await queue.put("c", 1, ts=1_700_000_000_123)
    assert timestamp_ms(message.message_id) == 1_700_000_000_123


# ---------------------------------------------------------------- the local API


@pytest.fixture
async def local(queue: MessageQueue) -> AsyncIterator[tuple[httpx.AsyncClient, LocalState]]:
    state = LocalState(queue, "http://cloud/api/v1")
    transport = httpx.ASGITransport(app=create_local_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        yield client, state


async def test_v2_device_says_whether_the_device_is_provisioned(
    local: tuple[httpx.AsyncClient, LocalState],
) -> None:
    client, state = local
    before = (await client.get("/v2/device")).json()
    assert before["provisioned"] is False
    assert before["uuid"] is None
    state.credentials = Credentials("123", "key", "123", "environment")
    after = (await client.get("/v2/device")).json()
    assert after["provisioned"] is True
    assert after["uuid"] == after["agent_id"] == "123"
    assert "key" not in str(after)


async def test_publishing_queues_the_message(
    local: tuple[httpx.AsyncClient, LocalState], queue: MessageQueue
) -> None:
    client, state = local
    state.credentials = Credentials("123", "key", "123", "environment")
    answer = await client.post("/v2/channels/sensors/temp/indoor/messages", json={"data": {"t": 1}})
    assert answer.status_code == 202
    assert answer.json()["channel"] == "sensors/temp/indoor"
    passthrough = await client.post(
        "/api/agents/123/channels/events/messages", json={"data": "x", "ts": 1_700_000_000_000}
    )
    assert passthrough.status_code == 202
    waiting = await queue.peek(10, 1 << 20)
    assert [(m.channel, m.data) for m in waiting] == [
        ("sensors/temp/indoor", b'{"t":1}'),
        ("events", b'"x"'),
    ]
    assert str(waiting[0].message_id) == answer.json()["message_id"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/channels/c/messages", {"no": "data"}, 400, '"data" is missing'),
        ("/v2/channels/c/messages", {"data": 1, "ts": "now"}, 400, "ts must be a Unix time"),
        ("/v2/channels/a//b/messages", {"data": 1}, 400, "not a valid channel name"),
        ("/api/agents/999/channels/c/messages", {"data": 1}, 404, "only for itself"),
    ],
)
async def test_bad_publishes_are_refused_clearly(
    local: tuple[httpx.AsyncClient, LocalState], path: str, body: object, status: int, message: str
) -> None:
    client, state = local
    state.credentials = Credentials("123", "key", "123", "environment")
    answer = await client.post(path, json=body)
    assert answer.status_code == status
    assert message in answer.json()["message"]


async def test_a_full_queue_answers_507(local: tuple[httpx.AsyncClient, LocalState]) -> None:
    client, _ = local
    for n in range(5):
        assert (await client.post("/v2/channels/c/messages", json={"data": n})).status_code == 202
    full = await client.post("/v2/channels/c/messages", json={"data": 5})
    assert full.status_code == 507
    assert full.json()["error"] == "QueueFull"


# ---------------------------------------------------------------- the forwarder


async def test_the_forwarder_waits_for_the_cloud_then_delivers_exactly_once(
    cloud: Cloud, tmp_path: Path
) -> None:
    async with MessageQueue(tmp_path / "outbox.db") as queue:
        for n in range(30):
            await queue.put("sensors/flow", {"n": n})
        client = DataClient(cloud.url, cloud.device_token, timeout=5)
        try:
            forwarder = Forwarder(queue, client, cloud.device_id, batch_size=7)
            with pytest.raises(CloudUnreachable, match="cannot reach"):
                await forwarder.forward_once()  # the cloud is not running
            assert queue.count == 30
            cloud.server.start()
            # A batch the cloud stored but the agent did not note (it died first) is
            # sent again: the message ids make the second send a no-op.
            first = await queue.peek(7, 1 << 20)
            await client.publish_batch([m.item(cloud.device_id) for m in first])
            assert await forwarder.drain() == 30
        finally:
            await client.aclose()
    history = cloud.messages("sensors/flow")
    assert [m["data"]["n"] for m in history] == list(range(30))
    assert cloud.aggregate("sensors/flow") == {"n": 29}  # merged in publish order


async def test_a_message_the_cloud_refuses_is_set_aside(cloud: Cloud, tmp_path: Path) -> None:
    cloud.server.start()
    with cloud.admin() as admin:
        schema = {"type": "object", "required": ["n"]}
        admin.put(
            f"/api/agents/{cloud.device_id}/channels/strict", json={"message_schema": schema}
        ).raise_for_status()
    async with MessageQueue(tmp_path / "outbox.db") as queue:
        await queue.put("strict", {"n": 1})
        await queue.put("strict", {"wrong": True})
        await queue.put("strict", {"n": 2})
        client = DataClient(cloud.url, cloud.device_token)
        try:
            assert await Forwarder(queue, client, cloud.device_id).drain() == 3
        finally:
            await client.aclose()
    assert [m["data"]["n"] for m in cloud.messages("strict")] == [1, 2]
    assert stats(tmp_path / "outbox.db")["rejected"] == 1


# ---------------------------------------------------------------- through a real agent


def publish_all(agent: AgentProcess, channel: str, numbers: range) -> None:
    for n in numbers:
        answer = agent.publish(channel, {"n": n})
        assert answer.status_code == 202, answer.text


def test_messages_survive_a_cloud_outage_and_agent_crashes(
    cloud: Cloud, agents: Callable[..., AgentProcess]
) -> None:
    agent = agents(
        DEVICE_UUID=cloud.device_id,
        DEVICE_API_KEY=cloud.device_token,
        CLOUD_API_URL=cloud.jobs_url,
        FLEETCLOUD_AGENT_BACKOFF_BASE="0.05",
        FLEETCLOUD_AGENT_BACKOFF_MAX="0.3",
    )
    channel = "sensors/level"
    # The cloud is down: the agent accepts and keeps everything.
    agent.start()
    publish_all(agent, channel, range(20))
    agent.kill()  # a crash: no shutdown code runs
    agent.start()
    publish_all(agent, channel, range(20, 40))
    agent.signal(signal.SIGTERM)  # a clean restart too
    assert agent.wait() == 0
    agent.start()
    publish_all(agent, channel, range(40, 50))
    # The cloud comes up: everything arrives, once, in order.
    cloud.server.start()
    wait_until(lambda: len(cloud.messages(channel)) >= 50, 60, "50 messages in the cloud")
    # The cloud crashes mid-stream and comes back.
    cloud.server.kill()
    publish_all(agent, channel, range(50, 70))
    cloud.server.start()
    wait_until(lambda: len(cloud.messages(channel)) >= 70, 60, "70 messages in the cloud")
    history = cloud.messages(channel)
    assert [m["data"]["n"] for m in history] == list(range(70))
    assert cloud.aggregate(channel) == {"n": 69}
    wait_until(lambda: stats(agent.data_dir / "outbox.db")["pending"] == 0, 30, "an empty queue")
    assert "Cloud unreachable; messages stay queued on disk" in agent.output()
