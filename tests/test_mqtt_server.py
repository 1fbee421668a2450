"""End to end with real processes: ``fleetcloud serve --mqtt-url`` as a subprocess, a
Mosquitto configured by ``fleetcloud mqtt broker-config``, the CLI, and a device."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import orjson
import pytest

from fleetcloud.commands import create_pusher_service
from fleetcloud.connectors import topics
from tests.commands_kit import DEADLINE, until_statuses
from tests.servers.fleetcloud import Server, cli, cli_json
from tests.servers.mosquitto import Broker, free_port, mosquitto_broker

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    database: str
    organisation: str
    admin_token: str
    device: str
    device_token: str
    broker: Broker
    connector_url: str
    parsers_dir: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    database = f"sqlite:///{tmp_path / 'fleet.db'}"
    org = cli_json("org", "create", "acme", "--database", database, "--json")
    device = cli_json(
        "device",
        "create",
        "sensor",
        "--org",
        org["organisation_id"],
        "--database",
        database,
        "--json",
    )
    cli("mqtt", "enroll", device["agent_id"], "--token", device["token"], "--database", database)
    port = free_port()
    written = cli_json(
        "mqtt", "broker-config", "--org", org["organisation_id"], "--out", str(tmp_path / "broker"),
        "--port", str(port), "--run-as", "root", "--database", database, "--json",
    )  # fmt: skip
    parsers = tmp_path / "parsers"
    parsers.mkdir()
    with mosquitto_broker(Path(written["config"]), port) as broker:
        yield Setup(
            database,
            org["organisation_id"],
            org["token"],
            device["agent_id"],
            device["token"],
            broker,
            written["connector_url"],
            parsers,
        )


@contextlib.contextmanager
def serving(setup: Setup, *extra: str) -> Iterator[Server]:
    server = Server(
        setup.database,
        extra=("--mqtt-url", setup.connector_url, "--parsers-dir", str(setup.parsers_dir), *extra),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def until(server: Server, setup: Setup, wanted: dict[str, str]) -> None:
    await until_statuses(server, setup.device, setup.admin_token, wanted)


async def receive(setup: Setup, count: int) -> list[dict[str, object]]:
    """Be the device: subscribe, say online, ack every command; return them in order."""
    received: list[dict[str, object]] = []
    async with aiomqtt.Client(
        "127.0.0.1", setup.broker.port, username=setup.device, password=setup.device_token
    ) as client:
        await client.subscribe(topics.command_topic(setup.device), qos=1)
        await client.publish(topics.status_topic(setup.device), b"online", qos=1)
        async with asyncio.timeout(DEADLINE):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                body = orjson.loads(message.payload)
                if body not in received:
                    received.append(body)
                ack = {"request_id": body["request_id"], "status": "SUCCEEDED"}
                await client.publish(topics.ack_topic(setup.device), orjson.dumps(ack), qos=1)
                if len(received) == count:
                    break
    return received


async def test_cli_push_and_a_server_restart_keeps_queued_commands(
    setup: Setup, tmp_path: Path
) -> None:
    parser = tmp_path / "led_parser.py"
    parser.write_text(
        "import json\n"
        "def format_command(command, config):\n"
        "    body = {'request_id': command['request_id'], 'led': command['payload']}\n"
        "    return json.dumps(body).encode()\n"
    )
    metadata = json.dumps({"topic": topics.command_topic(setup.device), "ack": "device"})
    with serving(setup) as server:
        auth = ("--url", server.url, "--token", setup.admin_token)
        uploaded = json.loads(cli("parser", "upload", str(parser), *auth, "--json"))
        assert uploaded["ref"] == "led_parser.py"
        listed = cli("parser", "list", *auth)
        assert "led_parser.py" in listed
        assert "compact_sensor.py" in listed
        assert cli("parser", "show", "led_parser", *auth).startswith("import json")
        assigned = json.loads(
            cli(
                "parser", "assign", setup.device, "compact_sensor.py", "--config", '{"a": 1}', *auth
            )
        )
        assert assigned["parser_script_ref"] == "compact_sensor.py"
        ids = [
            cli_json(
                "push", setup.device, "set_led", "--protocol", "mqtt", "--parser", "led_parser.py",
                "--payload", json.dumps({"n": n}), "--metadata", metadata, "--expires-in", "600",
                *auth, "--json",
            )["request_id"]
            for n in range(3)
        ]  # fmt: skip
        await until(server, setup, {ids[0]: "SENT", ids[1]: "QUEUED", ids[2]: "QUEUED"})
        server.kill()  # a crash: nothing is flushed on the way out
    with serving(setup) as server:
        received = await receive(setup, 3)
        assert [r["request_id"] for r in received] == ids
        assert [r["led"] for r in received] == [{"n": 0}, {"n": 1}, {"n": 2}]
        await until(server, setup, dict.fromkeys(ids, "SUCCEEDED"))
        shown = json.loads(
            cli("command", ids[0], "--url", server.url, "--token", setup.admin_token, "--json")
        )
        assert next(h["status"] for h in shown["history"]) == "QUEUED"
        assert shown["history"][-1]["status"] == "SUCCEEDED"


@pytest.mark.kafka
async def test_an_external_pusher_over_kafka_reaches_the_device(
    setup: Setup, kafka_url: str
) -> None:
    with serving(setup, "--bus", kafka_url) as server:
        pusher = await create_pusher_service(kafka_bootstrap_servers=kafka_url)
        assert pusher is not None
        device_task = asyncio.ensure_future(receive(setup, 1))
        try:
            await asyncio.sleep(1.0)  # the device subscribes
            assert await pusher.create_and_push_command(
                device_id=setup.device,
                command_type="set_led",
                payload={"state": "on"},
                protocol="mqtt",
                parser_script_ref="json_passthrough.py",
                metadata={"topic": topics.command_topic(setup.device)},
            )
            [received] = await device_task
        finally:
            device_task.cancel()
            await pusher.close()
        assert received["payload"] == {"state": "on"}
        request_id = str(received["request_id"])
        await until(server, setup, {request_id: "SUCCEEDED"})
        shown = json.loads(
            cli("command", request_id, "--url", server.url, "--token", setup.admin_token, "--json")
        )
        assert [h["status"] for h in shown["history"]][:2] == ["QUEUED", "SENT"]
