"""The CoAP connector on a real UDP socket: aiocoap devices (clients, and servers of
their own for direct delivery), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiocoap
import aiomqtt
import orjson
import pytest
from aiocoap.numbers.codes import Code

from fleetcloud.commands import CommandMessage, PusherService, lifecycle
from fleetcloud.commands.delivery import save_settings
from fleetcloud.commands.parsers import compact_sensor
from fleetcloud.connectors import coap_wire as wire
from fleetcloud.connectors import topics
from fleetcloud.connectors.coap import CoapConnector, CoapOptions
from fleetcloud.connectors.mosquitto import enroll_token
from fleetcloud.connectors.mqtt import MqttConnector, MqttOptions
from fleetcloud.core.errors import ConfigError
from fleetcloud.platform import Platform
from fleetcloud.store import channels as channel_repo
from tests.commands_kit import DEADLINE, CommandReads, eventually
from tests.conftest import Tenant
from tests.servers.coap import DeviceServer, device_server, free_udp_port
from tests.servers.mosquitto import broker_for, mosquitto_broker


@dataclass
class Rig(CommandReads):
    platform: Platform
    tenant: Tenant
    connector: CoapConnector
    client: Any  # an aiocoap client context: the devices
    port: int

    def uri(self, path: str, token: str | None = None) -> str:
        key = token if token is not None else self.tenant.device_token
        return f"coap://127.0.0.1:{self.port}{path}" + (f"?k={key}" if key else "")

    async def request(
        self, code: Code, path: str, payload: bytes = b"", token: str | None = None
    ) -> aiocoap.Message:
        message = aiocoap.Message(code=code, uri=self.uri(path, token), payload=payload)
        return await asyncio.wait_for(self.client.request(message).response, DEADLINE)

    async def poll(self, token: str | None = None) -> tuple[str, bytes] | None:
        response = await self.request(Code.GET, "/cmd", token=token)
        assert response.code == Code.CONTENT, response
        return wire.open_envelope(bytes(response.payload))

    async def ack(
        self, request_id: str, status: str = "SUCCEEDED", token: str | None = None, **extra: Any
    ) -> aiocoap.Message:
        body = orjson.dumps({"request_id": request_id, "status": status, **extra})
        return await self.request(Code.POST, "/ack", body, token=token)

    async def push(self, device_id: int | None = None, *, taken: bool = True, **fields: Any) -> str:
        """Push a command; with ``taken``, return once the connector has seen it (as a
        device's request a moment later would)."""
        defaults: dict[str, Any] = {
            "command_type": "set_led",
            "payload": {"state": "on"},
            "protocol": "coap",
            "parser_script_ref": "json_passthrough.py",
        }
        device = device_id if device_id is not None else self.tenant.device_id
        command = CommandMessage(device_id=str(device), **{**defaults, **fields})
        assert await PusherService(platform=self.platform).push_command(command)
        if taken and command.protocol == "coap":
            await eventually(lambda: self.connector_has(device))
        return command.request_id

    async def connector_has(self, device: int) -> bool:
        return device in self.connector.pending

    async def attempts_are(self, request_id: str, attempts: int) -> bool:
        command = await self.platform.store.read(lifecycle.get(request_id))
        return command is not None and command.attempts == attempts

    async def history(self, request_id: str) -> list[str]:
        found = await self.platform.store.read(lifecycle.history(request_id))
        return [h.status.value for h in found]


async def start_connector(platform: Platform, port: int) -> CoapConnector:
    options = CoapOptions(
        f"127.0.0.1:{port}",
        direct_timeout=1.0,
        retry_interval=0.3,
        max_retry_interval=0.6,
        expiry_interval=0.1,
        reconcile_interval=0.3,
    )
    connector = CoapConnector(platform, options)
    await connector.__aenter__()
    await asyncio.wait_for(connector.loaded.wait(), DEADLINE)
    return connector


@pytest.fixture
async def rig(platform: Platform, tenant: Tenant) -> AsyncIterator[Rig]:
    port = free_udp_port()
    connector = await start_connector(platform, port)
    client = await aiocoap.Context.create_client_context(transports=["udp6"])
    rig = Rig(platform, tenant, connector, client, port)
    try:
        yield rig
    finally:
        await client.shutdown()
        await rig.connector.__aexit__(None, None, None)  # a test may have replaced it


async def channel_data(platform: Platform, agent_id: int, name: str) -> list[Any]:
    channel = await platform.store.read(channel_repo.get_channel(agent_id, name))
    if channel is None:
        return []
    found = await platform.store.read(channel_repo.list_messages(channel, limit=100))
    return [m.data for m in reversed(found)]


def sensor_frame(kind: int, body: bytes) -> bytes:
    frame = bytes([1, kind]) + body
    return frame + struct.pack(">H", compact_sensor.crc16(frame))


# ---------------------------------------------------------------- uplinks


async def test_json_uplink_becomes_a_channel_message(rig: Rig) -> None:
    device = rig.tenant.device_id
    for n in range(3):
        body = orjson.dumps({"temperature": 20 + n})
        response = await rig.request(Code.POST, "/c/sensors/indoor", body)
        assert response.code == Code.CHANGED
        assert response.payload == b""  # nothing waiting for the device
    response = await rig.request(Code.PUT, "/c/sensors/indoor", b'{"humidity": 40}')
    assert response.code == Code.CHANGED
    assert await channel_data(rig.platform, device, "sensors/indoor") == [
        {"temperature": 20},
        {"temperature": 21},
        {"temperature": 22},
        {"humidity": 40},
    ]  # stored before the device was answered


async def test_uplink_through_the_devices_parser(rig: Rig) -> None:
    device = rig.tenant.device_id
    await rig.platform.store.write(save_settings(device, "compact_sensor.py", {}))
    frame = sensor_frame(0x81, struct.pack(">IhHH", 1_700_000_000, 2137, 4550, 3610))
    assert (await rig.request(Code.POST, "/c/sensors", frame)).code == Code.CHANGED
    refused = await rig.request(Code.POST, "/c/sensors", b"\x01\x81garbage")
    assert refused.code == Code.BAD_REQUEST
    assert b"compact_sensor.py" in refused.payload  # the parser's reason
    assert await channel_data(rig.platform, device, "sensors") == [
        {"ts": 1_700_000_000, "temperature": 21.37, "humidity": 45.5, "battery": 3.61}
    ]


async def test_wrong_or_missing_key_is_refused(rig: Rig) -> None:
    device = rig.tenant.device_id
    wrong = await rig.request(Code.POST, "/c/sensors", b'{"a": 1}', token="not-the-key")
    assert wrong.code == Code.UNAUTHORIZED
    missing = await rig.request(Code.POST, "/c/sensors", b'{"a": 1}', token="")
    assert missing.code == Code.UNAUTHORIZED
    assert b"k=KEY" in missing.payload
    admin = await rig.request(Code.GET, "/cmd", token=rig.tenant.admin_token)
    assert admin.code == Code.FORBIDDEN  # not a device's key
    assert await channel_data(rig.platform, device, "sensors") == []


async def test_bad_requests_get_a_clear_error_and_harm_nothing(rig: Rig) -> None:
    device = rig.tenant.device_id
    not_json = await rig.request(Code.POST, "/c/sensors", b"\xff not json")
    assert not_json.code == Code.BAD_REQUEST
    assert b"not JSON" in not_json.payload
    reserved = await rig.request(Code.POST, "/c/commands", b'{"status": "SUCCEEDED"}')
    assert reserved.code == Code.BAD_REQUEST
    empty_name = await rig.request(Code.POST, "/c", b"{}")
    assert empty_name.code == Code.BAD_REQUEST
    assert (await rig.request(Code.GET, "/nowhere")).code == Code.NOT_FOUND
    assert (await rig.request(Code.GET, "/c/sensors")).code == Code.METHOD_NOT_ALLOWED
    bad_ack = await rig.request(Code.POST, "/ack", b'{"status": "SUCCEEDED"}')
    assert bad_ack.code == Code.BAD_REQUEST
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:  # not CoAP at all
        raw.sendto(b"\xff\x00garbage", ("127.0.0.1", rig.port))
    assert (await rig.request(Code.POST, "/c/after", b"{}")).code == Code.CHANGED
    assert await channel_data(rig.platform, device, "after") == [{}]
    assert await channel_data(rig.platform, device, "commands") == []
    assert rig.connector.refused == 6


# ---------------------------------------------------------------- commands riding responses


async def test_commands_ride_responses_oldest_first_until_acknowledged(rig: Rig) -> None:
    ids = [await rig.push(payload={"n": n}) for n in range(3)]
    first = await rig.poll()
    assert first is not None
    request_id, data = first
    assert request_id == ids[0]
    assert orjson.loads(data) == {
        "request_id": ids[0],
        "command_type": "set_led",
        "payload": {"n": 0},
    }
    await rig.until(ids[0], "SENT")
    assert [await rig.status(i) for i in ids[1:]] == ["QUEUED", "QUEUED"]  # one at a time
    # Not acknowledged: the next response (to an uplink here) carries the same command.
    response = await rig.request(Code.POST, "/c/sensors", b'{"t": 1}')
    assert response.code == Code.CHANGED
    assert wire.open_envelope(bytes(response.payload)) == first
    await eventually(lambda: rig.attempts_are(ids[0], 2))  # the hand-out recorded
    # The ack's response carries the next one.
    acked = await rig.ack(ids[0], "SUCCEEDED")
    assert acked.code == Code.CHANGED
    second = wire.open_envelope(bytes(acked.payload))
    assert second is not None
    assert second[0] == ids[1]
    acked = await rig.ack(ids[1], "DELIVERED")
    third = wire.open_envelope(bytes(acked.payload))
    assert third is not None
    assert third[0] == ids[2]
    last = await rig.ack(ids[2], "FAILED", reason="LED broken")
    assert last.payload == b""
    assert await rig.poll() is None
    assert [await rig.status(i) for i in ids] == ["SUCCEEDED", "DELIVERED", "FAILED"]
    assert await rig.history(ids[0]) == ["QUEUED", "SENT", "SENT", "SUCCEEDED"]
    assert (await rig.until(ids[2], "FAILED")).reason == "LED broken"
    # A repeated ack changes nothing and is answered as a success.
    assert (await rig.ack(ids[0], "SUCCEEDED")).code == Code.CHANGED
    assert await rig.history(ids[0]) == ["QUEUED", "SENT", "SENT", "SUCCEEDED"]


async def test_binary_command_and_ack_through_the_parser(rig: Rig) -> None:
    device = rig.tenant.device_id
    await rig.platform.store.write(save_settings(device, "compact_sensor.py", {}))
    request_id = await rig.push(
        command_type="config_update",
        payload={"measurement_interval": 600, "request_device_info": True},
        parser_script_ref="compact_sensor.py",
    )
    got = await rig.poll()
    assert got is not None
    assert got[0] == request_id
    data = got[1]
    assert data[:2] == bytes([1, 0x10])
    assert data[3 : 3 + data[2]].decode() == request_id
    raw = request_id.encode()
    ack = sensor_frame(0x83, bytes([len(raw)]) + raw + bytes([2]))
    response = await rig.request(Code.POST, "/ack", ack)
    assert response.code == Code.CHANGED
    await rig.until(request_id, "SUCCEEDED")


async def test_only_the_device_itself_may_acknowledge(rig: Rig) -> None:
    request_id = await rig.push()
    assert (await rig.poll()) is not None
    other = rig.tenant.other_device_token
    body = orjson.dumps({"request_id": request_id, "status": "SUCCEEDED"})
    refused = await rig.request(Code.POST, "/ack", body, token=other)
    assert refused.code == Code.NOT_FOUND
    assert await rig.status(request_id) == "SENT"
    assert await rig.poll(token=other) is None  # not its command either


async def test_unknown_parser_and_none_result_fail_and_the_next_command_goes(rig: Rig) -> None:
    missing = await rig.push(parser_script_ref="no_such_parser.py")
    unknown_type = await rig.push(command_type="dance", parser_script_ref="compact_sensor.py")
    fine = await rig.push()
    got = await rig.poll()
    assert got is not None
    assert got[0] == fine
    failed = await rig.until(missing, "FAILED")
    assert failed.reason == "unknown parser script 'no_such_parser.py'"
    failed = await rig.until(unknown_type, "FAILED")
    assert failed.reason == "parser compact_sensor.py: format_command returned None"


async def test_a_command_nobody_asks_for_expires(rig: Rig) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    expiring = await rig.push(expires_at=soon)
    lasting = await rig.push()
    expired = await rig.until(expiring, "EXPIRED")
    assert expired.reason == "expired before delivery"
    assert await rig.history(expiring) == ["QUEUED", "EXPIRED"]
    got = await rig.poll()
    assert got is not None
    assert got[0] == lasting


async def test_mqtt_commands_are_not_the_coap_connectors(rig: Rig) -> None:
    mqtt = await rig.push(protocol="mqtt", metadata={"topic": "fleetcloud/x/commands"})
    coap = await rig.push()
    got = await rig.poll()
    assert got is not None
    assert got[0] == coap
    assert await rig.status(mqtt) == "QUEUED"


async def test_a_connector_restart_keeps_the_queued_command(rig: Rig) -> None:
    await rig.connector.__aexit__(None, None, None)
    request_id = await rig.push(payload={"kept": True}, taken=False)  # no connector runs
    rig.connector = await start_connector(rig.platform, rig.port)
    got = await rig.poll()
    assert got is not None
    assert got[0] == request_id
    assert orjson.loads(got[1])["payload"] == {"kept": True}
    await rig.ack(request_id)
    await rig.until(request_id, "SUCCEEDED")


# ---------------------------------------------------------------- direct delivery


async def test_direct_delivery_confirmable_to_the_devices_own_server(rig: Rig) -> None:
    device = rig.tenant.device_id
    async with device_server() as own:
        config = {wire.URL_SETTING: own.url}
        await rig.platform.store.write(save_settings(device, None, config))
        ids = [await rig.push(payload={"n": n}) for n in range(2)]
        received = [await own.next(), await own.next()]
    assert [r.path for r in received] == [("cmd",), ("cmd",)]
    assert all(r.confirmable for r in received)
    opened = [wire.open_envelope(r.payload) for r in received]
    assert [o[0] for o in opened if o is not None] == ids  # in order
    for request_id in ids:
        delivered = await rig.until(request_id, "DELIVERED")
        assert delivered.reason == "device answered 2.04 Changed"
    assert await rig.history(ids[0]) == ["QUEUED", "SENT", "DELIVERED"]


async def test_direct_delivery_non_confirmable_to_metadata_path(rig: Rig) -> None:
    device = rig.tenant.device_id
    async with device_server() as own:
        await rig.platform.store.write(save_settings(device, None, {wire.URL_SETTING: own.url}))
        request_id = await rig.push(metadata={"path": "/inbox/led", "confirmable": False})
        received = await own.next()
    assert received.path == ("inbox", "led")
    assert not received.confirmable
    assert wire.open_envelope(received.payload) == (
        request_id,
        orjson.dumps(
            {"request_id": request_id, "command_type": "set_led", "payload": {"state": "on"}}
        ),
    )
    await rig.until(request_id, "DELIVERED")


async def test_direct_delivery_refused_by_the_device_fails_with_its_answer(rig: Rig) -> None:
    device = rig.tenant.device_id
    own = DeviceServer(code=Code.BAD_REQUEST, answer=b"unknown command")
    async with device_server(own):
        await rig.platform.store.write(save_settings(device, None, {wire.URL_SETTING: own.url}))
        request_id = await rig.push()
        failed = await rig.until(request_id, "FAILED")
    assert failed.reason == "device refused it: 4.00 Bad Request: unknown command"


async def test_direct_delivery_waits_for_an_unreachable_device(rig: Rig) -> None:
    device = rig.tenant.device_id
    own = DeviceServer()
    await rig.platform.store.write(save_settings(device, None, {wire.URL_SETTING: own.url}))
    request_id = await rig.push()
    sent = await rig.until(request_id, "SENT")  # tried; nobody answered
    await asyncio.sleep(1.5)
    assert await rig.status(request_id) == "SENT"  # never DELIVERED on a guess
    async with device_server(own):
        received = await own.next()
        await rig.until(request_id, "DELIVERED")
    assert wire.open_envelope(received.payload) is not None
    assert (await rig.until(request_id, "DELIVERED")).attempts > sent.attempts


# ---------------------------------------------------------------- next to the MQTT connector


async def test_each_connector_takes_only_its_own_protocol(rig: Rig, tmp_path: Path) -> None:
    """Both connectors consume device_commands: a CoAP command is never published over
    MQTT, and an MQTT command never rides a CoAP response."""
    device, token = rig.tenant.device_id, rig.tenant.device_token
    store = rig.platform.store
    await enroll_token(store, device, token)
    config, port, url = await broker_for(store, rig.tenant.organisation.id, tmp_path / "broker")
    with mosquitto_broker(config, port):
        async with (
            MqttConnector(rig.platform, MqttOptions(url)) as mqtt,
            aiomqtt.Client("127.0.0.1", port, username=str(device), password=token) as client,
        ):
            await mqtt.wait_connected()
            await client.subscribe(topics.command_topic(device), qos=1)
            coap_first = await rig.push(metadata={"path": "/cmd"})
            over_mqtt = await rig.push(
                protocol="mqtt", metadata={"topic": topics.command_topic(device)}
            )
            async with asyncio.timeout(DEADLINE):
                message = await anext(aiter(client.messages))
            assert isinstance(message.payload, bytes)
            assert orjson.loads(message.payload)["request_id"] == over_mqtt
            await rig.until(over_mqtt, "DELIVERED")
            got = await rig.poll()
            assert got is not None
            assert got[0] == coap_first
            await rig.ack(coap_first)
            assert await rig.poll() is None  # the MQTT command is not CoAP's to hand out
            with pytest.raises(TimeoutError):  # nor is the CoAP command MQTT's to publish
                async with asyncio.timeout(1.0):
                    await anext(aiter(client.messages))
    assert await rig.history(coap_first) == ["QUEUED", "SENT", "SUCCEEDED"]


async def test_direct_delivery_resumes_after_a_connector_restart(rig: Rig) -> None:
    device = rig.tenant.device_id
    await rig.connector.__aexit__(None, None, None)
    async with device_server() as own:
        await rig.platform.store.write(save_settings(device, None, {wire.URL_SETTING: own.url}))
        request_id = await rig.push(taken=False)  # while no connector runs
        rig.connector = await start_connector(rig.platform, rig.port)
        received = await own.next()
    assert wire.open_envelope(received.payload) is not None
    assert received.payload.startswith(request_id.encode() + b"\n")
    await rig.until(request_id, "DELIVERED")


# ---------------------------------------------------------------- the wire format (pure)


def test_bind_addresses() -> None:
    assert wire.bind_address("192.0.2.1:5683") == ("192.0.2.1", 5683)
    assert wire.bind_address("[::1]:5684") == ("::1", 5684)
    assert wire.bind_address(":5685") == ("::", 5685)
    assert wire.bind_address("127.0.0.1") == ("127.0.0.1", 5683)
    for bad in ("localhost:5683", "1.2.3.4:x", "1.2.3.4:70000"):
        with pytest.raises(ConfigError, match="bad CoAP bind address"):
            wire.bind_address(bad)


def test_envelope_round_trip_and_bad_envelopes() -> None:
    data = b"\x01\n\x00binary with a line feed"
    assert wire.open_envelope(wire.envelope("r-1", data)) == ("r-1", data)
    assert wire.open_envelope(b"") is None
    for bad in (b"no separator", b"\nstarts with one"):
        with pytest.raises(ValueError, match="not a command envelope"):
            wire.open_envelope(bad)


def test_direct_uris() -> None:
    assert wire.direct_uri("coap://192.0.2.7:5683", None) == "coap://192.0.2.7:5683/cmd"
    assert wire.direct_uri("coap://[fd00::1]/", "/inbox") == "coap://[fd00::1]/inbox"
    for bad in ("http://192.0.2.7", "coap://", "coap://h/?q=1", 5683):
        assert wire.direct_uri(bad, "/cmd") is None
