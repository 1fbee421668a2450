"""The websocket gateway over real sockets, against ``fleetcloud serve`` in a subprocess."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.servers.fleetcloud import Server, cli_json, running_server

DISPATCH, HEARTBEAT, IDENTIFY, RESUME, INVALID_SESSION = 0, 1, 2, 6, 9
HELLO, HEARTBEAT_ACK, SUBSCRIBE, UNSUBSCRIBE, ACK, ERROR = 10, 11, 12, 13, 14, 15
WAIT = 5.0  # seconds a frame that should come may take


@dataclass
class World:
    """A server with two organisations: acme (admin, devices d1 and d2) and other."""

    server: Server
    admin: str
    d1: str
    d1_token: str
    d2: str
    d2_token: str
    foreign_device: str


def new_device(name: str, organisation_id: str, database: str) -> dict[str, str]:
    return cli_json(
        "device", "create", name, "--org", organisation_id, "--database", database, "--json"
    )


def make_world(server: Server) -> World:
    """The tenants, created with the CLI on the running server's database."""
    acme = cli_json("org", "create", "acme", "--database", server.database, "--json")
    other = cli_json("org", "create", "other", "--database", server.database, "--json")
    d1 = new_device("d1", acme["organisation_id"], server.database)
    d2 = new_device("d2", acme["organisation_id"], server.database)
    foreign = new_device("f1", other["organisation_id"], server.database)
    ids = (d1["agent_id"], d1["token"], d2["agent_id"], d2["token"], foreign["agent_id"])
    return World(server, acme["token"], *ids)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    database = f"sqlite:///{tmp_path_factory.mktemp('gateway') / 'db.sqlite'}"
    with running_server(database) as server:
        yield make_world(server)


class Peer:
    """One client connection, speaking the gateway's frames."""

    def __init__(self, socket: ClientConnection, hello: dict[str, Any]) -> None:
        self.socket = socket
        self.hello = hello

    async def send(self, op: int, data: Any = None) -> None:
        await self.socket.send(json.dumps({"op": op, "d": data}))

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
        return frame

    async def expect(self, op: int, kind: str | None = None) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["op"] == op, frame
        if kind is not None:
            assert frame["t"] == kind, frame
        return frame

    async def identify(self, token: str) -> dict[str, Any]:
        await self.send(IDENTIFY, {"token": token})
        return await self.expect(DISPATCH, "Ready")

    async def subscribe(self, agent_id: str, channel: str, **options: Any) -> dict[str, Any]:
        await self.send(SUBSCRIBE, {"agent_id": agent_id, "channel_name": channel, **options})
        return await self.recv()

    async def dispatches(self, count: int) -> list[dict[str, Any]]:
        return [await self.expect(DISPATCH) for _ in range(count)]

    async def error(self) -> dict[str, Any]:
        frame = await self.expect(ERROR)
        data: dict[str, Any] = frame["d"]
        return data

    async def still_works(self) -> None:
        await self.send(HEARTBEAT, None)
        assert await self.recv() == {"op": HEARTBEAT_ACK, "d": None}


@asynccontextmanager
async def connect(server: Server) -> AsyncIterator[Peer]:
    ws_url = server.url.replace("http://", "ws://") + "/api/gateway"
    async with websockets.connect(ws_url) as socket:
        hello = json.loads(await asyncio.wait_for(socket.recv(), WAIT))
        assert hello["op"] == HELLO
        yield Peer(socket, hello)


@asynccontextmanager
async def subscribed(world: World, channel: str, **options: Any) -> AsyncIterator[Peer]:
    """An admin connection subscribed to ``channel`` of d1."""
    async with connect(world.server) as peer:
        await peer.identify(world.admin)
        ack = await peer.subscribe(world.d1, channel, **options)
        assert ack["op"] == ACK, ack
        yield peer


async def admin_call(world: World, method: str, path: str, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {world.admin}"}
    async with httpx.AsyncClient(base_url=world.server.url, headers=headers) as http:
        response = await http.request(method, f"/api/agents/{path}", json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def publish(world: World, channel: str, data: Any, agent: str | None = None) -> str:
    """Publish ``data`` to ``channel`` of ``agent`` (d1) over HTTP; the new message's id."""
    path = f"{agent or world.d1}/channels/{channel}/messages"
    message_id: str = (await admin_call(world, "POST", path, {"data": data}))["id"]
    return message_id


async def make_private(world: World, agent: str, channel: str) -> None:
    await admin_call(world, "PUT", f"{agent}/channels/{channel}", {"is_private": True})


def by_kind(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [frame["d"] for frame in frames if frame["t"] == kind]


def sequences(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["s"] for frame in frames]


async def test_hello_then_identify_gives_ready(world: World) -> None:
    async with connect(world.server) as peer:
        assert peer.hello["d"] == {"heartbeat_interval": 20_000}
        ready = await peer.identify(world.d1_token)
    assert ready["s"] == 1
    assert ready["d"]["agent_id"] == world.d1
    assert len(ready["d"]["session_id"]) >= 16


async def test_identifying_again_starts_a_new_session(world: World) -> None:
    async with connect(world.server) as peer:
        first = await peer.identify(world.d1_token)
        second = await peer.identify(world.d2_token)
    assert second["d"]["agent_id"] == world.d2
    assert second["d"]["session_id"] != first["d"]["session_id"]


async def test_messages_and_aggregates_are_dispatched_in_sequence(world: World) -> None:
    async with subscribed(world, "weather") as peer:
        first = await publish(world, "weather", {"temp": 20, "unit": "C"})
        await publish(world, "weather", {"temp": 21})
        frames = await peer.dispatches(4)
    start = frames[0]["s"]
    assert sequences(frames) == [start, start + 1, start + 2, start + 3]
    messages = by_kind(frames, "MessageCreate")
    assert [m["data"] for m in messages] == [{"temp": 20, "unit": "C"}, {"temp": 21}]
    assert messages[0]["id"] == first
    assert messages[0]["channel"] == {"agent_id": world.d1, "name": "weather"}
    updates = by_kind(frames, "AggregateUpdate")
    assert [u["aggregate"]["data"] for u in updates] == [
        {"temp": 20, "unit": "C"},
        {"temp": 21, "unit": "C"},
    ]
    assert updates[1]["diff"] == {"temp": 21}


async def test_diff_only_subscription_gets_no_full_aggregate(world: World) -> None:
    await publish(world, "levels", {"tank": 5, "pump": "on"})
    async with subscribed(world, "levels", diff_only=True) as peer:
        await publish(world, "levels", {"pump": "off"})
        frames = await peer.dispatches(2)
    [update] = by_kind(frames, "AggregateUpdate")
    assert "aggregate" not in update
    assert update["diff"] == {"pump": "off"}


async def test_unsubscribe_stops_dispatches(world: World) -> None:
    async with subscribed(world, "noisy") as peer:
        assert (await peer.subscribe(world.d1, "quiet"))["op"] == ACK
        await peer.send(UNSUBSCRIBE, {"agent_id": world.d1, "channel_name": "noisy"})
        ack = await peer.expect(ACK)
        assert ack["d"] == {"op": UNSUBSCRIBE, "agent_id": world.d1, "channel_name": "noisy"}
        await publish(world, "noisy", {"n": 1})
        await publish(world, "quiet", {"n": 2})
        frames = await peer.dispatches(2)
    assert {frame["d"]["channel"]["name"] for frame in frames} == {"quiet"}


async def test_heartbeat_is_acknowledged(world: World) -> None:
    async with connect(world.server) as peer:
        await peer.still_works()
        await peer.identify(world.d1_token)
        await peer.still_works()


BAD_FRAMES: list[str | bytes] = [
    "not json",
    "[1, 2]",
    '{"op": "subscribe"}',
    '{"op": 99, "d": null}',
    '{"op": 2, "d": {"token": 5}}',
    b"\x00\x01binary",
]


async def test_bad_frames_get_an_error_and_the_connection_keeps_working(world: World) -> None:
    async with connect(world.server) as peer:
        await peer.identify(world.d1_token)
        for bad in BAD_FRAMES:
            await peer.socket.send(bad)
            assert (await peer.error())["status"] == 400, bad
            await peer.still_works()
        await peer.send(SUBSCRIBE, {"agent_id": "not-a-number", "channel_name": "x"})
        assert (await peer.error())["status"] == 400
        assert (await peer.subscribe(world.d1, "x"))["op"] == ACK


async def test_bad_token_is_refused(world: World) -> None:
    async with connect(world.server) as peer:
        await peer.send(IDENTIFY, {"token": "not-a-token"})
        assert (await peer.error())["status"] == 401
        await peer.still_works()  # and no Ready came before the ACK
        await peer.send(SUBSCRIBE, {"agent_id": world.d1, "channel_name": "weather"})
        assert (await peer.error())["status"] == 403


async def test_another_organisations_agent_is_not_found(world: World) -> None:
    async with connect(world.server) as peer:
        await peer.identify(world.admin)
        frame = await peer.subscribe(world.foreign_device, "sensors")
    assert frame["op"] == ERROR
    assert frame["d"]["status"] == 404


async def test_private_channel_of_another_device_is_forbidden(world: World) -> None:
    await make_private(world, world.d2, "secrets")
    async with connect(world.server) as peer:
        await peer.identify(world.d1_token)
        refused = await peer.subscribe(world.d2, "secrets")
    assert refused["op"] == ERROR
    assert refused["d"]["status"] == 403
    async with connect(world.server) as owner:
        await owner.identify(world.d2_token)
        assert (await owner.subscribe(world.d2, "secrets"))["op"] == ACK


async def test_a_channel_made_private_later_is_not_dispatched_to_other_devices(
    world: World,
) -> None:
    async with connect(world.server) as peer:
        await peer.identify(world.d1_token)
        for channel in ("later", "open"):  # neither exists yet: both readable
            assert (await peer.subscribe(world.d2, channel))["op"] == ACK
        await make_private(world, world.d2, "later")
        await publish(world, "later", {"secret": 1}, agent=world.d2)
        await publish(world, "open", {"public": 1}, agent=world.d2)
        frames = await peer.dispatches(2)
    assert {frame["d"]["channel"]["name"] for frame in frames} == {"open"}


async def test_resume_replays_exactly_what_was_missed(world: World) -> None:
    async with connect(world.server) as peer:
        session = (await peer.identify(world.admin))["d"]["session_id"]
        await peer.subscribe(world.d1, "resumable")
        await publish(world, "resumable", {"n": 0})
        last = (await peer.dispatches(2))[-1]["s"]
        peer.socket.transport.abort()  # dropped, not closed politely
    for n in range(1, 6):
        await publish(world, "resumable", {"n": n})
    async with connect(world.server) as peer:
        await peer.send(RESUME, {"token": world.admin, "session_id": session, "seq": last})
        frames = await peer.dispatches(11)  # 5 messages, 5 aggregates and Resumed
        await publish(world, "resumable", {"n": 6})
        frames += await peer.dispatches(2)
    assert sequences(frames) == list(range(last + 1, last + 14))  # no gap, no repeat
    published = list(range(1, 7))
    assert [m["data"]["n"] for m in by_kind(frames, "MessageCreate")] == published
    assert [u["aggregate"]["data"]["n"] for u in by_kind(frames, "AggregateUpdate")] == published


async def test_resume_before_the_old_connection_notices_the_drop(world: World) -> None:
    async with connect(world.server) as old:
        ready = await old.identify(world.admin)
        await old.subscribe(world.d1, "handover")
        async with connect(world.server) as new:
            resume = {
                "token": world.admin,
                "session_id": ready["d"]["session_id"],
                "seq": ready["s"],
            }
            await new.send(RESUME, resume)
            assert (await new.expect(DISPATCH, "Resumed"))["d"]["replayed"] == 0
            await asyncio.wait_for(old.socket.wait_closed(), WAIT)  # the server drops it
            assert old.socket.close_code == 4008
            await publish(world, "handover", {"after": "close"})
            frames = await new.dispatches(2)
    assert by_kind(frames, "MessageCreate")[0]["data"] == {"after": "close"}


async def test_resume_of_an_unknown_session_is_invalid(world: World) -> None:
    async with connect(world.server) as peer:
        await peer.send(RESUME, {"token": world.admin, "session_id": "nope", "seq": 3})
        assert (await peer.expect(INVALID_SESSION))["d"] is False
        session = (await peer.identify(world.admin))["d"]["session_id"]
    async with connect(world.server) as intruder:  # someone else's session
        await intruder.send(RESUME, {"token": world.d1_token, "session_id": session, "seq": 1})
        assert (await intruder.expect(INVALID_SESSION))["d"] is False


async def test_a_silent_client_is_disconnected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETCLOUD_HEARTBEAT_INTERVAL_MS", "500")
    with running_server(f"sqlite:///{tmp_path / 'db.sqlite'}") as server:
        async with connect(server) as silent, connect(server) as beating:
            assert silent.hello["d"] == {"heartbeat_interval": 500}

            async def beat_until_silent_is_closed() -> None:
                while silent.socket.close_code is None:
                    await asyncio.sleep(0.2)
                    await beating.still_works()

            await asyncio.wait_for(beat_until_silent_is_closed(), WAIT)
            assert silent.socket.close_code == 4009
            await beating.still_works()  # kept alive by its heartbeats all along
