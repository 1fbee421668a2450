"""Commands: the seed's API (CommandMessage, PusherService over Kafka and the embedded
bus), validation, the HTTP API and its tenant isolation, parser script management."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from fleetcloud.commands import (
    CommandMessage,
    InvalidCommand,
    PusherService,
    create_pusher_service,
    create_pusher_service_sync,
    lifecycle,
)
from fleetcloud.commands.core.models import CommandMessage as ModelsCommandMessage
from fleetcloud.commands.core.models import CommandStatus
from fleetcloud.commands.lifecycle import Change
from fleetcloud.commands.service import PusherService as ServicePusherService
from fleetcloud.commands.tracker import CommandTracker
from fleetcloud.core.errors import ValidationFailed
from fleetcloud.core.types import CHANNEL_EVENTS
from fleetcloud.platform import Platform
from fleetcloud.store import channels as channel_repo
from tests.conftest import Tenant, make_tenant
from tests.servers.postgres import free_port

# ---------------------------------------------------------------- the model


def test_seed_import_paths_name_the_same_classes() -> None:
    assert ModelsCommandMessage is CommandMessage
    assert ServicePusherService is PusherService


def test_a_command_gets_an_id_and_a_time() -> None:
    command = CommandMessage(
        device_id="efento_device_001",
        command_type="config_update",
        payload={"measurement_interval": 600, "request_device_info": True},
        protocol="coap",
        parser_script_ref="efento_bidirectional_parser.py",
    )
    assert len(command.request_id) == 36
    assert command.timestamp.tzinfo is not None
    assert command.expires_at is None
    assert CommandMessage.from_dict(command.to_json()) == command


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"protocol": "http"}, "protocol"),
        ({"device_id": ""}, "device_id"),
        ({"command_type": "has spaces"}, "command_type"),
        ({"parser_script_ref": "../etc/passwd"}, "parser_script_ref"),
        ({"payload": [1, 2]}, "payload"),
        ({"metadata": {"topic": "devices/#"}}, "metadata.topic"),
        ({"metadata": {"topic": "a\x00b"}}, "metadata.topic"),
        ({"metadata": {"topic": "t" * 65_536}}, "metadata.topic"),
        ({"metadata": {"topic": "t", "qos": 5}}, "metadata.qos"),
        ({"metadata": {"topic": "t", "retain": "yes"}}, "metadata.retain"),
        ({"metadata": {"ack": "sometimes"}}, "metadata.ack"),
        ({"expires_at": "not a time"}, "expires_at"),
        ({"path": "/old-field"}, "path"),
    ],
)
def test_invalid_values_are_rejected_clearly(fields: dict[str, Any], problem: str) -> None:
    base: dict[str, Any] = {
        "device_id": "1",
        "command_type": "reboot",
        "protocol": "mqtt",
        "parser_script_ref": "p.py",
    }
    with pytest.raises(InvalidCommand) as caught:
        CommandMessage(**{**base, **fields})
    assert caught.value.message.startswith("invalid command:")
    assert problem in caught.value.message
    assert isinstance(caught.value, ValidationFailed)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidCommand):
        CommandMessage.from_dict({**base, **fields})


def test_missing_fields_are_named() -> None:
    with pytest.raises(InvalidCommand) as caught:
        CommandMessage.from_dict({"device_id": "1"})
    for name in ("command_type", "protocol", "parser_script_ref"):
        assert name in caught.value.message


# ---------------------------------------------------------------- PusherService over Kafka


async def _consume(url: str, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=url.removeprefix("kafka://"),
        auto_offset_reset="earliest",
        group_id=f"test-{free_port()}",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(records) < count and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for found in batch.values():
                records.extend(found)
    finally:
        await consumer.stop()
    return records


@pytest.mark.kafka
async def test_seed_basic_usage_over_kafka(kafka_url: str) -> None:
    """The seed's first samples, with only the import path changed."""
    topic = f"device_commands_{free_port()}"
    pusher = PusherService(kafka_bootstrap_servers=kafka_url, command_topic=topic)
    await pusher.initialize()
    command = CommandMessage(
        device_id="efento_device_001",
        command_type="config_update",
        payload={"measurement_interval": 600, "request_device_info": True},
        protocol="coap",
        parser_script_ref="efento_bidirectional_parser.py",
    )
    success = await pusher.push_command(command)
    assert success is True
    assert await pusher.create_and_push_command(
        device_id="efento_device_001",
        command_type="time_sync",
        payload={},
        protocol="coap",
        parser_script_ref="efento_bidirectional_parser.py",
    )
    assert await pusher.create_and_push_command(
        device_id="mqtt_device_001",
        command_type="set_led",
        payload={"state": "on", "color": "blue"},
        protocol="mqtt",
        parser_script_ref="mqtt_device_parser.py",
        metadata={"topic": "devices/mqtt_device_001/commands"},
    )
    command_dict = {
        "device_id": "efento_device_001",
        "command_type": "config_update",
        "payload": {"measurement_interval": 600},
        "protocol": "coap",
        "parser_script_ref": "efento_bidirectional_parser.py",
    }
    assert await pusher.push_command_dict(command_dict)
    with pytest.raises(InvalidCommand):
        await pusher.push_command_dict({**command_dict, "protocol": "carrier-pigeon"})
    await pusher.close()
    records = await _consume(kafka_url, topic, 4)
    assert [r.key for r in records if r.key == b"mqtt_device_001"] == [b"mqtt_device_001"]
    values = [orjson.loads(r.value) for r in records]
    assert values[0] == command.to_json() or command.to_json() in values
    efento = [v["command_type"] for v in values if v["device_id"] == "efento_device_001"]
    assert efento == ["config_update", "time_sync", "config_update"]  # one key, in order


@pytest.mark.kafka
async def test_seed_create_pusher_service_helper(kafka_url: str) -> None:
    topic = f"device_commands_{free_port()}"

    async def control_temperature(device_id: str, temperature: float) -> bool:
        pusher = await create_pusher_service(kafka_bootstrap_servers=kafka_url, command_topic=topic)
        if not pusher:
            return False
        try:
            return await pusher.create_and_push_command(
                device_id=device_id,
                command_type="set_temperature",
                payload={"temperature": temperature},
                protocol="mqtt",
                parser_script_ref="mqtt_device_parser.py",
                metadata={"topic": f"devices/{device_id}/commands"},
            )
        finally:
            await pusher.close()

    assert await control_temperature("device123", 21.5)
    [record] = await _consume(kafka_url, topic, 1)
    assert record.key == b"device123"
    assert orjson.loads(record.value)["payload"] == {"temperature": 21.5}


@pytest.mark.kafka
async def test_seed_synchronous_usage(kafka_url: str) -> None:
    topic = f"device_commands_{free_port()}"

    def seed_sample() -> bool:
        pusher = create_pusher_service_sync(kafka_bootstrap_servers=kafka_url, command_topic=topic)
        assert pusher is not None
        command_dict = {
            "device_id": "device456",
            "command_type": "reboot",
            "payload": {"delay": 5},
            "protocol": "mqtt",
            "parser_script_ref": "mqtt_device_parser.py",
            "metadata": {"topic": "devices/device456/system"},
        }
        loop = asyncio.new_event_loop()
        try:
            success = loop.run_until_complete(pusher.push_command_dict(command_dict))
        finally:
            loop.run_until_complete(pusher.close())
            loop.close()
        return success

    assert await asyncio.to_thread(seed_sample)
    [record] = await _consume(kafka_url, topic, 1)
    assert orjson.loads(record.value)["command_type"] == "reboot"


async def test_unreachable_kafka_gives_none() -> None:
    url = f"127.0.0.1:{free_port()}"
    assert await create_pusher_service(kafka_bootstrap_servers=url) is None
    assert await asyncio.to_thread(create_pusher_service_sync, url) is None
    pusher = PusherService(kafka_bootstrap_servers=url)
    assert await pusher.initialize() is False
    command = CommandMessage(
        device_id="d", command_type="reboot", protocol="mqtt", parser_script_ref="p.py"
    )
    assert await pusher.push_command(command) is False


def test_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.delenv("DEVICE_COMMAND_TOPIC", raising=False)
    pusher = PusherService()
    assert (pusher.kafka_bootstrap_servers, pusher.command_topic) == (
        "kafka:9092",
        "device_commands",
    )
    monkeypatch.setenv("DEVICE_COMMAND_TOPIC", "other")
    assert PusherService().command_topic == "other"


# ---------------------------------------------------------------- the embedded bus


async def test_embedded_pusher_records_and_publishes(platform: Platform, tenant: Tenant) -> None:
    subscription = await platform.bus.subscribe(["device_commands"], "test-reader")
    pusher = PusherService(platform=platform)
    assert await pusher.create_and_push_command(
        device_id=str(tenant.device_id),
        command_type="reboot",
        payload={},
        protocol="mqtt",
        parser_script_ref="json_passthrough.py",
        metadata={"topic": "t"},
    )
    events = await subscription.next_batch(timeout=10)
    await subscription.close()
    [event] = events
    assert event.key == str(tenant.device_id)
    stored = await platform.store.read(lifecycle.get(event.value["request_id"]))
    assert stored is not None
    assert stored.status.value == "QUEUED"
    channel = await platform.store.read(channel_repo.require_channel(tenant.device_id, "commands"))
    assert channel.aggregate["status"] == "QUEUED"


async def test_unknown_device_fails(platform: Platform) -> None:
    command = CommandMessage(
        device_id="no-such-device", command_type="reboot", protocol="mqtt", parser_script_ref="p.py"
    )
    assert await PusherService(platform=platform).push_command(command)
    stored = await platform.store.read(lifecycle.get(command.request_id))
    assert stored is not None
    assert (stored.status.value, stored.reason) == ("FAILED", "unknown device")


async def test_recording_is_idempotent(platform: Platform, tenant: Tenant) -> None:
    command = CommandMessage(
        device_id=str(tenant.device_id), command_type="x", protocol="mqtt", parser_script_ref="p"
    )
    for _ in range(3):
        await platform.store.write(lifecycle.record([command, command]))
    history = await platform.store.read(lifecycle.history(command.request_id))
    assert [h.status.value for h in history] == ["QUEUED"]


async def test_a_tracker_unit_saves_its_changes_together_in_order(
    platform: Platform, tenant: Tenant
) -> None:
    """Records and changes queued together are written as one unit: every transition in
    the history and on the ``commands`` channel, in the order made, with one aggregate
    update for the channel (not one per record and one per run of changes)."""
    events = await platform.bus.subscribe([CHANNEL_EVENTS], "test-reader")
    messages = [
        CommandMessage(
            device_id=str(tenant.device_id), command_type=f"c{n}", protocol="mqtt",
            parser_script_ref="p.py",
        )
        for n in range(3)
    ]  # fmt: skip
    ids = [m.request_id for m in messages]
    async with CommandTracker(platform.store) as tracker:
        recorded = tracker.record_soon(messages)
        sent = tracker.apply([Change(i, CommandStatus.SENT) for i in ids])
        delivered = tracker.apply([Change(i, CommandStatus.DELIVERED) for i in ids])
        await asyncio.wait_for(asyncio.gather(recorded, sent, delivered), 10)
    for request_id in ids:
        history = await platform.store.read(lifecycle.history(request_id))
        assert [h.status.value for h in history] == ["QUEUED", "SENT", "DELIVERED"]
    channel = await platform.store.read(channel_repo.require_channel(tenant.device_id, "commands"))
    written = await platform.store.read(channel_repo.list_messages(channel, limit=20))
    assert [(m.data["status"], m.data["command_type"]) for m in reversed(written)] == [
        (status, f"c{n}") for status in ("QUEUED", "SENT", "DELIVERED") for n in range(3)
    ]
    assert channel.aggregate["status"] == "DELIVERED"
    seen: list[str] = []
    while batch := await events.next_batch(timeout=1):  # everything the unit emitted
        seen += [e.value["t"] for e in batch if e.key == str(tenant.device_id)]
    await events.close()
    assert sorted(seen) == ["AggregateUpdate"] + ["MessageCreate"] * 9


# ---------------------------------------------------------------- the HTTP API


def _body(device_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "device_id": str(device_id),
        "command_type": "set_led",
        "payload": {"state": "on"},
        "protocol": "mqtt",
        "parser_script_ref": "json_passthrough.py",
        "metadata": {"topic": f"fleetcloud/{device_id}/commands"},
        **fields,
    }


async def test_push_then_status_history_and_list(api: httpx.AsyncClient, tenant: Tenant) -> None:
    expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    pushed = await api.post(
        "/api/commands", json=_body(tenant.device_id, expires_at=expires), headers=tenant.headers()
    )
    assert pushed.status_code == 202, pushed.text
    request_id = pushed.json()["request_id"]
    assert pushed.json()["status"] == "QUEUED"
    got = await api.get(f"/api/commands/{request_id}", headers=tenant.headers())
    assert got.status_code == 200
    body = got.json()
    assert body["status"] == "QUEUED"
    assert body["agent_id"] == str(tenant.device_id)
    assert [h["status"] for h in body["history"]] == ["QUEUED"]
    assert body["expires_at"] is not None
    listed = await api.get(f"/api/agents/{tenant.device_id}/commands", headers=tenant.headers())
    assert [c["request_id"] for c in listed.json()] == [request_id]
    again = await api.post(
        "/api/commands",
        json=_body(tenant.device_id, request_id=request_id),
        headers=tenant.headers(),
    )
    assert again.status_code == 202  # the same request id again: nothing new
    listed = await api.get(f"/api/agents/{tenant.device_id}/commands", headers=tenant.headers())
    assert len(listed.json()) == 1


async def test_invalid_command_is_a_422(api: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await api.post(
        "/api/commands", json=_body(tenant.device_id, protocol="smoke"), headers=tenant.headers()
    )
    assert response.status_code == 422
    assert "protocol" in response.json()["message"]


async def test_commands_api_tenant_isolation(
    api: httpx.AsyncClient, platform: Platform, tenant: Tenant
) -> None:
    other = await make_tenant(platform.store, "rival")
    pushed = await api.post("/api/commands", json=_body(tenant.device_id), headers=tenant.headers())
    request_id = pushed.json()["request_id"]
    outsider = other.headers()
    assert (await api.get(f"/api/commands/{request_id}", headers=outsider)).status_code == 404
    listed = await api.get(f"/api/agents/{tenant.device_id}/commands", headers=outsider)
    assert listed.status_code == 404
    foreign = await api.post("/api/commands", json=_body(tenant.device_id), headers=outsider)
    assert foreign.status_code == 404
    reuse = await api.post(
        "/api/commands", json=_body(other.device_id, request_id=request_id), headers=outsider
    )
    assert reuse.status_code == 409
    # A device may command itself, not its neighbour, and only on its own topics.
    own = tenant.headers(tenant.device_token)
    mine = await api.post("/api/commands", json=_body(tenant.device_id), headers=own)
    assert mine.status_code == 202
    neighbour = await api.post("/api/commands", json=_body(tenant.other_device_id), headers=own)
    assert neighbour.status_code == 403
    sneaky = _body(tenant.device_id, metadata={"topic": f"fleetcloud/{tenant.other_device_id}/x"})
    assert (await api.post("/api/commands", json=sneaky, headers=own)).status_code == 403
    peek = await api.get(
        f"/api/commands/{request_id}", headers=tenant.headers(tenant.other_device_token)
    )
    assert peek.status_code == 403


# ---------------------------------------------------------------- parser scripts over HTTP

PARSER = b"def format_command(command, config):\n    return b'v1'\n"


async def test_parser_upload_list_get(api: httpx.AsyncClient, tenant: Tenant) -> None:
    put = await api.put("/api/parsers/led_parser.py", content=PARSER, headers=tenant.headers())
    assert put.status_code == 201, put.text
    assert put.json()["version"] == 1
    again = await api.put(
        "/api/parsers/led_parser", content=PARSER + b"# v2\n", headers=tenant.headers()
    )
    assert again.status_code == 200
    assert again.json()["version"] == 2
    listed = {s["ref"]: s for s in (await api.get("/api/parsers", headers=tenant.headers())).json()}
    assert listed["led_parser.py"]["origin"] == "upload"
    assert listed["json_passthrough.py"]["origin"] == "builtin"
    assert "compact_sensor.py" in listed
    got = await api.get("/api/parsers/led_parser.py", headers=tenant.headers())
    assert got.json()["source"].endswith("# v2\n")
    device = tenant.headers(tenant.device_token)
    refused = await api.put("/api/parsers/evil.py", content=PARSER, headers=device)
    assert refused.status_code == 403
    broken = await api.put("/api/parsers/bad.py", content=b"def (:", headers=tenant.headers())
    assert broken.status_code == 422
    assert "not valid Python" in broken.json()["message"]
    nothing = await api.put("/api/parsers/empty.py", content=b"x = 1\n", headers=tenant.headers())
    assert nothing.status_code == 422
    unknown = await api.get("/api/parsers/nope.py", headers=tenant.headers())
    assert unknown.status_code == 404
    assert (
        await api.delete("/api/parsers/led_parser.py", headers=tenant.headers())
    ).status_code == 204


async def test_uploads_are_per_organisation(
    api: httpx.AsyncClient, platform: Platform, tenant: Tenant
) -> None:
    other = await make_tenant(platform.store, "rival")
    await api.put("/api/parsers/secret.py", content=PARSER, headers=tenant.headers())
    assert (await api.get("/api/parsers/secret.py", headers=other.headers())).status_code == 404


async def test_device_parser_settings(api: httpx.AsyncClient, tenant: Tenant) -> None:
    path = f"/api/agents/{tenant.device_id}/parser"
    body = {"parser_script_ref": "compact_sensor", "config": {"unit": "C"}}
    put = await api.put(path, json=body, headers=tenant.headers())
    assert put.json() == {
        "agent_id": str(tenant.device_id),
        "parser_script_ref": "compact_sensor.py",
        "config": {"unit": "C"},
    }
    assert (await api.get(path, headers=tenant.headers())).json() == put.json()
    neighbour = tenant.headers(tenant.other_device_token)
    assert (await api.get(path, headers=neighbour)).status_code == 403
