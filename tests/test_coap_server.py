"""End to end with real processes: ``fleetcloud serve --coap-bind`` as a subprocess, the
CLI, and a device played by the third-party client ``coap-client-notls`` (libcoap)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetcloud.connectors import coap_wire as wire
from tests.commands_kit import until_statuses
from tests.servers.coap import coap_client, free_udp_port
from tests.servers.fleetcloud import Server, cli, cli_json

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    database: str
    admin_token: str
    device: str
    device_token: str
    coap_port: int
    out: Path

    def uri(self, path: str) -> str:
        return f"coap://127.0.0.1:{self.coap_port}{path}?k={self.device_token}"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    database = f"sqlite:///{tmp_path / 'fleet.db'}"
    org = cli_json("org", "create", "acme", "--database", database, "--json")
    device = cli_json(
        "device", "create", "sensor", "--org", org["organisation_id"],
        "--database", database, "--json",
    )  # fmt: skip
    return Setup(
        database, org["token"], device["agent_id"], device["token"], free_udp_port(), tmp_path
    )


@pytest.fixture
def server(setup: Setup) -> Iterator[Server]:
    server = Server(setup.database, extra=("--coap-bind", f"127.0.0.1:{setup.coap_port}"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def device_says(setup: Setup, method: str, path: str, body: str | None = None) -> bytes:
    """Be the device with coap-client-notls; returns the response payload, byte for byte."""
    answer = setup.out / "answer.bin"
    answer.unlink(missing_ok=True)
    args = ["-m", method, "-o", str(answer)]
    if body is not None:
        args += ["-e", body]
    _, err = await coap_client(*args, setup.uri(path))
    assert not err.strip().startswith(b"4."), err  # coap-client prints error codes there
    return answer.read_bytes() if answer.exists() else b""


def setup_headers(setup: Setup) -> dict[str, str]:
    return {"Authorization": f"Bearer {setup.admin_token}"}


async def until(server: Server, setup: Setup, wanted: dict[str, str]) -> None:
    await until_statuses(server, setup.device, setup.admin_token, wanted)


def push(server: Server, setup: Setup, payload: dict[str, Any]) -> str:
    return cli_json(
        "push", setup.device, "set_led", "--protocol", "coap", "--parser", "json_passthrough.py",
        "--payload", json.dumps(payload), "--expires-in", "600",
        "--url", server.url, "--token", setup.admin_token, "--json",
    )["request_id"]  # fmt: skip


async def test_coap_client_uplink_command_and_ack_across_a_server_restart(
    setup: Setup, server: Server
) -> None:
    assert await device_says(setup, "post", "/c/sensors/indoor", '{"temperature": 21.5}') == b""
    async with httpx.AsyncClient(base_url=server.url, headers=setup_headers(setup)) as http:
        found = await http.get(f"/api/agents/{setup.device}/channels/sensors/indoor/messages")
    messages = found.json()
    assert [m["data"] for m in messages] == [{"temperature": 21.5}]

    ids = [push(server, setup, {"n": n}) for n in range(2)]
    await until(server, setup, dict.fromkeys(ids, "QUEUED"))
    server.kill()  # a crash: nothing is flushed on the way out
    server.start()

    first = wire.open_envelope(await device_says(setup, "get", "/cmd"))
    assert first is not None
    assert first[0] == ids[0]
    assert json.loads(first[1]) == {
        "request_id": ids[0],
        "command_type": "set_led",
        "payload": {"n": 0},
    }
    await until(server, setup, {ids[0]: "SENT", ids[1]: "QUEUED"})

    ack = json.dumps({"request_id": ids[0], "status": "SUCCEEDED"})
    second = wire.open_envelope(await device_says(setup, "post", "/ack", ack))
    assert second is not None
    assert second[0] == ids[1]  # the ack's response carries the next command
    ack = json.dumps({"request_id": ids[1], "status": "SUCCEEDED"})
    assert await device_says(setup, "post", "/ack", ack) == b""
    await until(server, setup, dict.fromkeys(ids, "SUCCEEDED"))
    shown = json.loads(
        cli("command", ids[0], "--url", server.url, "--token", setup.admin_token, "--json")
    )
    assert [h["status"] for h in shown["history"]] == ["QUEUED", "SENT", "SUCCEEDED"]


async def test_coap_client_with_a_wrong_key_gets_4_01(setup: Setup, server: Server) -> None:
    wrong = f"coap://127.0.0.1:{setup.coap_port}/c/sensors?k=fc_wrong"
    out, err = await coap_client("-m", "post", "-e", '{"a": 1}', wrong)
    assert out == b""
    assert err.decode().startswith("4.01")
