"""Reliability: ``fleetcloud serve`` is SIGKILLed while devices publish, then restarted.

Nothing the server acknowledged may be lost: every acknowledged message is in its
channel's history with the data that was sent, each channel's aggregate is the RFC 7396
fold of its history in id order, and a durable bus consumer group registered before the
crash is handed a ``MessageCreate`` event for every message in the history — no more (an
event for a message that was never written), no fewer.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcloud.bus.memory import MemoryBus
from fleetcloud.core.merge import merge_patch
from fleetcloud.core.types import CHANNEL_EVENTS
from fleetcloud.store import open_store
from tests.servers.fleetcloud import Server, cli_json

pytestmark = pytest.mark.slow

GROUP = "crash-test-consumer"
PUBLISHERS_SINGLE = 3
PUBLISHERS_BATCH = 3
ACKED_BEFORE_KILL = 300  # publish at least this much before pulling the plug
PAGE = 1000

ChannelKey = tuple[str, str]  # (agent id, channel name)


def patch(rng: random.Random, seq: int) -> Any:
    """Message data that exercises merge-patch: nested objects that merge, nulls that
    delete keys at any depth, lists and scalars that replace, objects over scalars."""
    roll = rng.random()
    if roll < 0.01:
        return rng.choice([seq, [seq, "reset"]])  # not an object: replaces the aggregate
    data: dict[str, Any] = {"seq": seq}
    if rng.random() < 0.6:
        data["temperature"] = round(rng.uniform(-10, 40), 2)
    if rng.random() < 0.15:
        data["temperature"] = None
    config: dict[str, Any] = {}
    if rng.random() < 0.5:
        config["mode"] = rng.choice(["auto", "eco", "boost"])
    if rng.random() < 0.3:
        config["limits"] = {"high": rng.randint(20, 40), "low": rng.choice([0, 5, None])}
    if rng.random() < 0.1:
        config["limits"] = None
    if rng.random() < 0.1:
        config["mode"] = None
    if config or rng.random() < 0.1:
        data["config"] = config
    if rng.random() < 0.2:
        data["tags"] = rng.sample(["a", "b", "c", "d"], rng.randint(0, 3))
    if rng.random() < 0.1:
        data["location"] = rng.choice(["shed", {"lat": -33.9, "lon": 151.2}, None])
    return data


@dataclass
class Ledger:
    """Every message the server acknowledged with HTTP 200, and what went wrong."""

    acked: dict[ChannelKey, dict[int, Any]] = field(default_factory=dict)
    count: int = 0
    refused: list[str] = field(default_factory=list)

    def ack(self, key: ChannelKey, message_id: Any, data: Any) -> None:
        self.acked.setdefault(key, {})[int(message_id)] = data
        self.count += 1


async def publisher(
    url: str,
    token: str,
    channels: list[ChannelKey],
    ledger: Ledger,
    stop: asyncio.Event,
    seed: int,
    *,
    batches: bool,
) -> None:
    """Publish until told to stop or until the server goes away."""
    rng = random.Random(seed)
    seq = seed * 1_000_000
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
        while not stop.is_set():
            try:
                if batches:
                    targets = [rng.choice(channels) for _ in range(rng.randint(1, 25))]
                    items = []
                    for agent_id, name in targets:
                        seq += 1
                        items.append(
                            {"agent_id": agent_id, "channel_name": name, "data": patch(rng, seq)}
                        )
                    answer = await client.post("/api/agents/messages", json={"items": items})
                else:
                    agent_id, name = rng.choice(channels)
                    seq += 1
                    data = patch(rng, seq)
                    answer = await client.post(
                        f"/api/agents/{agent_id}/channels/{name}/messages", json={"data": data}
                    )
            except httpx.HTTPError:
                return  # the server is gone; whatever was in flight is unacknowledged
            if answer.status_code != 200:
                ledger.refused.append(f"{answer.status_code}: {answer.text[:200]}")
                continue
            body = answer.json()
            if batches:
                for sent, result in zip(items, body["items"], strict=True):
                    if result["success"]:
                        key = (sent["agent_id"], sent["channel_name"])
                        ledger.ack(key, result["message_id"], sent["data"])
                    else:
                        ledger.refused.append(str(result))
            else:
                ledger.ack((agent_id, name), body["id"], data)


async def history(client: httpx.AsyncClient, key: ChannelKey) -> list[tuple[int, Any]]:
    """A channel's whole history over the API, oldest first, as (id, data)."""
    agent_id, name = key
    found: list[tuple[int, Any]] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": PAGE}
        if before is not None:
            params["before"] = before
        answer = await client.get(f"/api/agents/{agent_id}/channels/{name}/messages", params=params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        found.extend((int(m["id"]), m["data"]) for m in page)
        if len(page) < PAGE:
            break
        before = int(page[-1]["id"])
    found.reverse()
    return found


def fold(messages: list[tuple[int, Any]]) -> Any:
    aggregate: Any = None
    for _, data in messages:
        aggregate = merge_patch(aggregate, data)
    return aggregate if aggregate is not None else {}


async def register_group(database: str) -> None:
    """Subscribe once as the durable group, then go away without consuming anything."""
    async with open_store(database) as store, MemoryBus(store) as bus:
        subscription = await bus.subscribe([CHANNEL_EVENTS], group=GROUP)
        await subscription.close()


async def consume_group(database: str, channels: list[ChannelKey]) -> dict[int, Any]:
    """What the group is handed until it has caught up: MessageCreate id → data, for
    messages on ``channels`` (other services in ``serve`` may publish elsewhere)."""
    created: dict[int, Any] = {}
    wanted = set(channels)
    async with open_store(database) as store, MemoryBus(store) as bus:
        subscription = await bus.subscribe([CHANNEL_EVENTS], group=GROUP)
        async with subscription:
            for _ in range(1000):
                batch = await subscription.next_batch(timeout=0.5)
                for event in batch:
                    body = event.value.get("d") or {}
                    channel = body.get("channel") or {}
                    key = (channel.get("agent_id"), channel.get("name"))
                    if event.value["t"] == "MessageCreate" and key in wanted:
                        message_id = int(event.value["id"])
                        assert message_id not in created, "an event was delivered twice"
                        created[message_id] = event.value["d"]["data"]
                await subscription.commit()
                if not batch and (await bus.lag()).get(GROUP) == 0:
                    break  # caught up with the whole outbox
            else:
                raise AssertionError("the consumer group did not catch up")
    return created


async def test_acknowledged_messages_survive_a_crash(database_url: str, tmp_path: Path) -> None:
    organisation = await asyncio.to_thread(
        cli_json, "org", "create", "crash", "--database", database_url, "--json"
    )
    devices = [
        await asyncio.to_thread(
            cli_json,
            "device",
            "create",
            f"meter-{n}",
            "--org",
            organisation["organisation_id"],
            "--database",
            database_url,
            "--json",
        )
        for n in range(2)
    ]
    channels: list[ChannelKey] = [
        (device["agent_id"], name)
        for device in devices
        for name in ("sensors/climate", "state", "config/remote")
    ]
    await register_group(database_url)

    server = Server(database_url, log=tmp_path / "server.log")
    await asyncio.to_thread(server.start)
    ledger = Ledger()
    stop = asyncio.Event()
    try:
        tasks = [
            asyncio.create_task(
                publisher(
                    server.url,
                    organisation["token"],
                    channels,
                    ledger,
                    stop,
                    seed,
                    batches=seed >= PUBLISHERS_SINGLE,
                )
            )
            for seed in range(PUBLISHERS_SINGLE + PUBLISHERS_BATCH)
        ]
        for _ in range(300):
            if ledger.count >= ACKED_BEFORE_KILL or all(task.done() for task in tasks):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in tasks), "a publisher stopped before the crash"
        await asyncio.to_thread(server.kill)  # mid-flight: publishers are still sending
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        stop.set()
        server.kill()
    assert not ledger.refused, ledger.refused[:5]
    assert ledger.count >= ACKED_BEFORE_KILL

    restarted = Server(database_url, log=tmp_path / "server.log")
    await asyncio.to_thread(restarted.start)
    try:
        headers = {"Authorization": f"Bearer {organisation['token']}"}
        async with httpx.AsyncClient(base_url=restarted.url, headers=headers) as client:
            stored: dict[ChannelKey, list[tuple[int, Any]]] = {}
            for key in channels:
                stored[key] = await history(client, key)
                by_id = dict(stored[key])
                acked = ledger.acked.get(key, {})
                missing = sorted(set(acked) - set(by_id))
                assert not missing, f"{len(missing)} acknowledged messages lost on {key}"
                for message_id, data in acked.items():
                    assert by_id[message_id] == data, f"message {message_id} changed"
                agent_id, name = key
                answer = await client.get(f"/api/agents/{agent_id}/channels/{name}/aggregate")
                assert answer.status_code == 200, answer.text
                assert answer.json()["data"] == fold(stored[key]), f"aggregate of {key}"
    finally:
        await asyncio.to_thread(restarted.stop)

    # the durable consumer group, registered before the crash, has lost nothing either
    created = await consume_group(database_url, channels)
    written = {message_id: data for messages in stored.values() for message_id, data in messages}
    assert set(created) == set(written)
    assert created == written
    assert len(written) >= ledger.count  # plus whatever committed but was not yet answered
