"""The MQTT connector against a real Mosquitto, configured by ``fleetcloud mqtt
broker-config`` (password file + ACL), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from fleetcloud.commands import CommandMessage, PusherService, lifecycle
from fleetcloud.commands.delivery import save_settings
from fleetcloud.commands.parsers import compact_sensor
from fleetcloud.connectors import mqtt, topics
from fleetcloud.connectors.mosquitto import enroll_token
from fleetcloud.connectors.mqtt import MqttConnector, MqttOptions
from fleetcloud.connectors.paho_speedups import Publisher
from fleetcloud.platform import Platform
from fleetcloud.store import channels as channel_repo
from tests.commands_kit import DEADLINE, CommandReads, eventually
from tests.conftest import Tenant
from tests.servers.mosquitto import Broker, broker_for, mosquitto_broker


@dataclass
class Rig(CommandReads):
    platform: Platform
    tenant: Tenant
    broker: Broker
    connector: MqttConnector

    @property
    def port(self) -> int:
        return self.broker.port

    async def push(self, device_id: int, **fields: Any) -> str:
        defaults: dict[str, Any] = {
            "command_type": "set_led",
            "payload": {"state": "on"},
            "protocol": "mqtt",
            "parser_script_ref": "json_passthrough.py",
            "metadata": {"topic": topics.command_topic(device_id)},
        }
        command = CommandMessage(device_id=str(device_id), **{**defaults, **fields})
        assert await PusherService(platform=self.platform).push_command(command)
        return command.request_id


@contextlib.asynccontextmanager
async def device_client(
    port: int, agent_id: int, token: str, **options: Any
) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        "127.0.0.1", port, username=str(agent_id), password=token, **options
    ) as client:
        yield client


async def next_payload(client: aiomqtt.Client, timeout: float = DEADLINE) -> bytes:
    async def first() -> bytes:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return message.payload
        raise AssertionError("the connection closed")

    return await asyncio.wait_for(first(), timeout)


@pytest.fixture
async def rig(platform: Platform, tenant: Tenant, tmp_path: Path) -> AsyncIterator[Rig]:
    store = platform.store
    await enroll_token(store, tenant.device_id, tenant.device_token)
    await enroll_token(store, tenant.other_device_id, tenant.other_device_token)
    config, port, url = await broker_for(store, tenant.organisation.id, tmp_path / "broker")
    options = MqttOptions(
        url, ack_timeout=1.0, max_ack_timeout=2.0, expiry_interval=0.2, reconcile_interval=0.3
    )
    with mosquitto_broker(config, port) as broker:
        async with MqttConnector(platform, options) as connector:
            await connector.wait_connected()
            await asyncio.wait_for(connector.loaded.wait(), DEADLINE)
            yield Rig(platform, tenant, broker, connector)


# ---------------------------------------------------------------- commands out


async def test_device_receives_parser_bytes_and_acks(rig: Rig) -> None:
    """A device simulated with mosquitto_sub / mosquitto_pub gets the parser's bytes and
    its acknowledgement moves the command to SUCCEEDED."""
    device, token = rig.tenant.device_id, rig.tenant.device_token
    auth = ["-p", str(rig.port), "-u", str(device), "-P", token]
    sub_args = ["-t", topics.command_topic(device), "-q", "1", "-C", "1", "-F", "%x"]
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", *auth, *sub_args, stdout=asyncio.subprocess.PIPE
    )
    try:
        await asyncio.sleep(0.5)  # let it subscribe
        request_id = await rig.push(
            device,
            command_type="config_update",
            payload={"measurement_interval": 600, "request_device_info": True},
            parser_script_ref="compact_sensor.py",
            metadata={"topic": topics.command_topic(device), "qos": 1, "ack": "device"},
        )
        out, _ = await asyncio.wait_for(sub.communicate(), DEADLINE)
    finally:
        if sub.returncode is None:
            sub.kill()
            await sub.wait()
    received = bytes.fromhex(out.decode().strip())
    assert received[:2] == bytes([1, 0x10])
    assert received[3 : 3 + received[2]].decode() == request_id
    assert struct.unpack(">BBI", received[3 + received[2] : 3 + received[2] + 6]) == (1, 4, 600)
    assert (await rig.until(request_id, "SENT")).attempts >= 1
    ack = orjson.dumps({"request_id": request_id, "status": "SUCCEEDED"}).decode()
    pub = await asyncio.create_subprocess_exec(
        "mosquitto_pub", *auth, "-t", topics.ack_topic(device), "-q", "1", "-m", ack
    )
    assert await asyncio.wait_for(pub.wait(), DEADLINE) == 0
    await rig.until(request_id, "SUCCEEDED")
    history = await rig.platform.store.read(lifecycle.history(request_id))
    assert [h.status.value for h in history] == ["QUEUED", "SENT", "SUCCEEDED"]
    messages = await rig.platform.store.read(
        channel_repo.list_messages(
            await rig.platform.store.read(channel_repo.require_channel(device, "commands")),
            limit=10,
        )
    )
    assert [m.data["status"] for m in reversed(messages)] == ["QUEUED", "SENT", "SUCCEEDED"]


async def test_qos1_without_device_acks_is_delivered_on_puback(rig: Rig) -> None:
    device = rig.tenant.device_id
    async with device_client(rig.port, device, rig.tenant.device_token) as client:
        await client.subscribe(topics.command_topic(device), qos=1)
        request_id = await rig.push(device)
        payload = await next_payload(client)
    assert orjson.loads(payload) == {
        "request_id": request_id,
        "command_type": "set_led",
        "payload": {"state": "on"},
    }
    await rig.until(request_id, "DELIVERED")
    history = await rig.platform.store.read(lifecycle.history(request_id))
    assert [h.status.value for h in history] == ["QUEUED", "SENT", "DELIVERED"]


async def test_qos0_without_device_acks_stays_sent(rig: Rig) -> None:
    device = rig.tenant.device_id
    request_id = await rig.push(device, metadata={"topic": topics.command_topic(device), "qos": 0})
    await rig.until(request_id, "SENT")
    await asyncio.sleep(0.5)
    assert await rig.status(request_id) == "SENT"  # nobody said it arrived


async def test_missing_topic_fails_and_the_next_command_still_goes(rig: Rig) -> None:
    device = rig.tenant.device_id
    broken = await rig.push(device, metadata={"qos": 1})
    fine = await rig.push(device)
    failed = await rig.until(broken, "FAILED")
    assert failed.reason == "metadata.topic is required for MQTT commands"
    await rig.until(fine, "DELIVERED")


async def test_unacknowledged_command_expires(rig: Rig) -> None:
    device = rig.tenant.device_id
    soon = CommandMessage(
        device_id=str(device),
        command_type="reboot",
        protocol="mqtt",
        parser_script_ref="compact_sensor",
        metadata={"topic": topics.command_topic(device), "ack": "device"},
        expires_at=datetime.now(UTC) + timedelta(seconds=5),
    )
    assert await PusherService(platform=rig.platform).push_command(soon)
    await rig.until(soon.request_id, "SENT")  # tried; nobody acknowledges
    expired = await rig.until(soon.request_id, "EXPIRED")
    assert expired.reason == "expired before delivery"
    assert expired.attempts >= 2  # resent while it waited
    history = await rig.platform.store.read(lifecycle.history(soon.request_id))
    assert history[0].status.value == "QUEUED"
    assert history[-1].status.value == "EXPIRED"


async def test_offline_device_gets_its_commands_in_order(rig: Rig) -> None:
    device, token = rig.tenant.device_id, rig.tenant.device_token
    metadata = {"topic": topics.command_topic(device), "ack": "device"}
    ids = [await rig.push(device, payload={"n": n}, metadata=metadata) for n in range(5)]
    await rig.until(ids[0], "SENT")  # tried while nobody listens
    assert [await rig.status(i) for i in ids[1:]] == ["QUEUED"] * 4  # one at a time
    received: list[str] = []
    async with device_client(rig.port, device, token) as client:
        await client.subscribe(topics.command_topic(device), qos=1)
        await client.publish(topics.status_topic(device), b"online", qos=1)
        while len(received) < 5:
            body = orjson.loads(await next_payload(client))
            if body["request_id"] in received:
                continue  # a resend of one we already have
            received.append(body["request_id"])
            ack = {"request_id": body["request_id"], "status": "SUCCEEDED"}
            await client.publish(topics.ack_topic(device), orjson.dumps(ack), qos=1)
    assert received == ids
    for request_id in ids:
        await rig.until(request_id, "SUCCEEDED")


async def test_broker_restart_mid_stream_loses_no_command(rig: Rig) -> None:
    device, token = rig.tenant.device_id, rig.tenant.device_token
    metadata = {"topic": topics.command_topic(device), "ack": "device", "qos": 1}
    total = 30
    ids = [await rig.push(device, payload={"n": n}, metadata=metadata) for n in range(total)]
    received: set[str] = set()

    async def run_device() -> None:
        while len(received) < total:
            with contextlib.suppress(aiomqtt.MqttError):
                async with device_client(rig.port, device, token) as client:
                    await client.subscribe(topics.command_topic(device), qos=1)
                    await client.publish(topics.status_topic(device), b"online", qos=1)
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        request_id = orjson.loads(message.payload)["request_id"]
                        received.add(request_id)
                        ack = {"request_id": request_id, "status": "SUCCEEDED"}
                        await client.publish(topics.ack_topic(device), orjson.dumps(ack), qos=1)
                        if len(received) >= total:
                            return
            await asyncio.sleep(0.2)

    async with asyncio.TaskGroup() as tasks:
        device_task = tasks.create_task(run_device())
        await eventually(lambda: _true(len(received) >= total // 3))
        await asyncio.to_thread(rig.broker.restart)
        await asyncio.wait_for(device_task, DEADLINE * 2)
    assert received == set(ids)
    for request_id in ids:
        await rig.until(request_id, "SUCCEEDED")


async def push_many(rig: Rig, device: int, count: int, **metadata: Any) -> list[str]:
    """``count`` commands for ``device`` queued in one go (one transaction), in order."""
    commands = [
        CommandMessage(
            device_id=str(device),
            command_type="set_led",
            payload={"n": n},
            protocol="mqtt",
            parser_script_ref="json_passthrough.py",
            metadata={"topic": topics.command_topic(device), **metadata},
        )
        for n in range(count)
    ]
    await rig.platform.store.write(lifecycle.record(commands, emit_topic="device_commands"))
    return [command.request_id for command in commands]


def first_arrivals(seen: list[str]) -> list[str]:
    return list(dict.fromkeys(seen))


async def test_a_burst_for_one_device_arrives_in_order_and_each_is_delivered(rig: Rig) -> None:
    # Broker-acknowledged commands are published several at a time, without waiting for
    # each PUBACK: the device must still see them in order, each once.
    device, token = rig.tenant.device_id, rig.tenant.device_token
    seen: list[str] = []
    reader = rig.connector._reader
    assert reader is not None, "the connector's reader did not take over"
    async with device_client(rig.port, device, token) as client:
        await client.subscribe(topics.command_topic(device), qos=1)
        ids = await push_many(rig, device, 300, qos=1)
        while len(seen) < len(ids):
            seen.append(orjson.loads(await next_payload(client))["request_id"])
    assert seen == ids
    for request_id in (ids[0], ids[150], ids[-1]):
        await rig.until(request_id, "DELIVERED")
        history = await rig.platform.store.read(lifecycle.history(request_id))
        assert [h.status.value for h in history] == ["QUEUED", "SENT", "DELIVERED"]
    statuses = {await rig.status(request_id) for request_id in ids}
    assert statuses == {"DELIVERED"}
    assert reader.acknowledged >= len(ids)  # the broker's PUBACKs, taken by the reader
    connection = rig.connector.connection
    assert connection is not None
    assert connection.publisher is not None, "the connector's publisher did not take over"
    assert connection.publisher.waiting == {}  # each publish settled by its PUBACK


async def test_the_publisher_settles_each_publish_when_the_broker_has_it(rig: Rig) -> None:
    device, token = rig.tenant.device_id, rig.tenant.device_token
    topic = topics.uplink_topic(device, "publisher")
    async with device_client(rig.port, device, token) as client:
        publisher = Publisher(client, asyncio.get_running_loop())
        assert publisher.install()
        at_qos1 = [publisher.publish(topic, b'{"n": %d}' % n, 1, False) for n in range(50)]
        assert not any(future.done() for future in at_qos1)  # each waits for its PUBACK
        assert len(publisher.waiting) == 50
        await asyncio.wait_for(asyncio.gather(*at_qos1), DEADLINE)
        assert publisher.waiting == {}
        await asyncio.wait_for(publisher.publish(topic, b'{"n": 50}', 0, False), DEADLINE)
        await client.publish(topic, b'{"n": 51}', qos=1, timeout=DEADLINE)  # aiomqtt's own
        with pytest.raises(ValueError, match="topic"):  # paho refuses it: the future says so
            await publisher.publish("a/#", b"{}", 1, False)
    with pytest.raises(aiomqtt.MqttCodeError):  # the connection is gone
        await publisher.publish(topic, b'{"n": 52}', 1, False)

    async def stored() -> list[Any]:
        data = await _channel_data(rig.platform, device, "publisher")
        return data if len(data) == 52 else []

    assert [item["n"] for item in await eventually(stored)] == list(range(52))


async def test_broker_restart_during_a_burst_keeps_order_and_leaves_none_behind(
    rig: Rig,
) -> None:
    device, token = rig.tenant.device_id, rig.tenant.device_token
    seen: list[str] = []
    total = 400
    listening = asyncio.Event()

    async def run_device() -> None:
        while len(set(seen)) < total:
            with contextlib.suppress(aiomqtt.MqttError):
                async with device_client(rig.port, device, token) as client:
                    await client.subscribe(topics.command_topic(device), qos=1)
                    listening.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        seen.append(orjson.loads(message.payload)["request_id"])
            await asyncio.sleep(0.1)

    async with asyncio.TaskGroup() as tasks:
        device_task = tasks.create_task(run_device())
        await asyncio.wait_for(listening.wait(), DEADLINE)
        ids = await push_many(rig, device, total, qos=1)
        await eventually(lambda: _true(len(set(seen) & set(ids)) >= total // 4))
        await asyncio.to_thread(rig.broker.restart)
        # every command ends DELIVERED (the broker acknowledged it), none stays pending
        for request_id in ids:
            await rig.until(request_id, "DELIVERED")
        device_task.cancel()
    arrived = [request_id for request_id in first_arrivals(seen) if request_id in set(ids)]
    # while the broker was down the device could not listen, so some may be missing, but
    # what it got came in the order pushed
    assert arrived == [request_id for request_id in ids if request_id in set(arrived)]
    assert len(arrived) > total // 4


async def _true(value: bool) -> bool:
    return value


# ---------------------------------------------------------------- uplinks in


async def _channel_data(platform: Platform, agent_id: int, name: str) -> list[Any]:
    channel = await platform.store.read(channel_repo.get_channel(agent_id, name))
    if channel is None:
        return []
    found = await platform.store.read(channel_repo.list_messages(channel, limit=100))
    return [m.data for m in reversed(found)]


async def test_json_uplink_becomes_a_channel_message(rig: Rig) -> None:
    device, token = rig.tenant.device_id, rig.tenant.device_token
    async with device_client(rig.port, device, token) as client:
        for n in range(3):
            reading = {"temperature": 20 + n}
            await client.publish(
                topics.uplink_topic(device, "sensors/indoor"), orjson.dumps(reading), qos=1
            )

    async def landed() -> list[Any]:
        data = await _channel_data(rig.platform, device, "sensors/indoor")
        return data if len(data) == 3 else []

    assert await eventually(landed) == [
        {"temperature": 20},
        {"temperature": 21},
        {"temperature": 22},
    ]


async def test_uplinks_at_qos_0_and_1_all_land_through_the_fast_reader_and_its_pauses(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connector reads QoS 0 publishes itself and leaves the rest to paho; with a tiny
    inbound limit, reading the broker pauses and resumes again and again. Every reading
    lands, whole (one of them larger than the read buffer), each QoS in its order."""
    monkeypatch.setattr(mqtt, "INBOUND_LIMIT", 5)
    reader = rig.connector._reader
    assert reader is not None, "the connector's reader did not take over"
    handle = rig.connector.handle

    async def paused() -> int:
        return reader.pauses

    async def handle_once_paused(batch: Any) -> None:
        await eventually(paused)  # the first batch waits for the pile-up to pause reading
        await handle(batch)

    monkeypatch.setattr(rig.connector, "handle", handle_once_paused)
    device, token = rig.tenant.device_id, rig.tenant.device_token
    topic = topics.uplink_topic(device, "mixed")
    sent = []
    async with device_client(rig.port, device, token) as client:
        for n in range(300):
            reading = {"n": n, "qos": 1 if n % 5 == 0 else 0}
            if n in (150, 151):  # one of each QoS
                reading["pad"] = "x" * 150_000  # past the 64 KiB read buffer
            sent.append(reading)
            await client.publish(topic, orjson.dumps(reading), qos=reading["qos"])

    async def landed() -> list[Any]:
        channel = await rig.platform.store.read(channel_repo.get_channel(device, "mixed"))
        if channel is None:
            return []
        found = await rig.platform.store.read(channel_repo.list_messages(channel, limit=1000))
        return [m.data for m in reversed(found)] if len(found) == len(sent) else []

    got = await eventually(landed)
    for qos in (0, 1):
        assert [r for r in got if r["qos"] == qos] == [r for r in sent if r["qos"] == qos]
    assert reader.pauses >= 1
    assert not reader.paused


async def test_uplink_through_the_devices_parser(rig: Rig) -> None:
    device, token = rig.tenant.device_id, rig.tenant.device_token
    await rig.platform.store.write(save_settings(device, "compact_sensor.py", {}))
    frame = bytes([1, 0x81]) + struct.pack(">IhHH", 1_700_000_000, 2137, 4550, 3610)
    frame += struct.pack(">H", compact_sensor.crc16(frame))
    async with device_client(rig.port, device, token) as client:
        await client.publish(topics.uplink_topic(device, "sensors"), frame, qos=1)
        await client.publish(topics.uplink_topic(device, "sensors"), b"\x01\x81garbage", qos=1)

    async def landed() -> list[Any]:
        return await _channel_data(rig.platform, device, "sensors")

    data = await eventually(landed)
    assert data == [{"ts": 1_700_000_000, "temperature": 21.37, "humidity": 45.5, "battery": 3.61}]
    await asyncio.sleep(0.3)
    assert len(await _channel_data(rig.platform, device, "sensors")) == 1  # bad CRC dropped


async def test_binary_ack_through_the_devices_parser(rig: Rig) -> None:
    device, token = rig.tenant.device_id, rig.tenant.device_token
    await rig.platform.store.write(save_settings(device, "compact_sensor.py", {}))
    request_id = await rig.push(
        device,
        command_type="time_sync",
        payload={"unix_ms": 1_700_000_000_000},
        parser_script_ref="compact_sensor.py",
        metadata={"topic": topics.command_topic(device), "ack": "device"},
    )
    await rig.until(request_id, "SENT")
    raw = request_id.encode()
    frame = bytes([1, 0x83, len(raw)]) + raw + bytes([2])
    frame += struct.pack(">H", compact_sensor.crc16(frame))
    async with device_client(rig.port, device, token) as client:
        await client.publish(topics.ack_topic(device), frame, qos=1)
    await rig.until(request_id, "SUCCEEDED")


async def test_broker_refuses_publishing_into_another_devices_topics(rig: Rig) -> None:
    """The ACL keeps a device inside fleetcloud/<its id>/: its publish to another
    device's channel never reaches the connector, and it cannot read others' commands."""
    mine, other = rig.tenant.device_id, rig.tenant.other_device_id
    token = rig.tenant.device_token
    async with device_client(rig.port, mine, token) as client:
        await client.subscribe(topics.command_topic(other), qos=1)
        spoofed = {"request_id": "x", "status": "SUCCEEDED"}
        await client.publish(topics.uplink_topic(other, "sensors"), b'{"spoofed": true}', qos=1)
        await client.publish(topics.ack_topic(other), orjson.dumps(spoofed), qos=1)
        await client.publish(topics.uplink_topic(mine, "sensors"), b'{"own": true}', qos=1)
        other_request = await rig.push(other)
        with pytest.raises(TimeoutError):
            await next_payload(client, timeout=1.0)  # the other device's command
    assert await eventually(lambda: _channel_data(rig.platform, mine, "sensors")) == [{"own": True}]
    await rig.until(other_request, "DELIVERED")
    assert await _channel_data(rig.platform, other, "sensors") == []


async def test_device_may_not_write_the_commands_channel(rig: Rig) -> None:
    device, token = rig.tenant.device_id, rig.tenant.device_token
    async with device_client(rig.port, device, token) as client:
        fake = {"request_id": "x", "status": "SUCCEEDED"}
        await client.publish(topics.uplink_topic(device, "commands"), orjson.dumps(fake), qos=1)
        await client.publish(topics.uplink_topic(device, "after"), b"{}", qos=1)
    await eventually(lambda: _channel_data(rig.platform, device, "after"))
    assert await _channel_data(rig.platform, device, "commands") == []


async def test_wrong_password_is_refused(rig: Rig) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with device_client(rig.port, rig.tenant.device_id, "not-the-token"):
            pass


def unique() -> str:
    return uuid.uuid4().hex[:8]
