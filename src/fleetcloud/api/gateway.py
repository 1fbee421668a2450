"""The websocket gateway: live channel events, resumable after a dropped connection.

Frames are JSON ``{"op": int, "d": …, "t"?: str, "s"?: int}``::

    server → client   10 HELLO           {"heartbeat_interval": ms}
    client → server    2 IDENTIFY        {"token": "…"}
    server → client    0 DISPATCH t=Ready {"session_id", "agent_id", "organisation_id"}
    client → server   12 SUBSCRIBE       {"agent_id", "channel_name", "diff_only"?: bool}
    client → server   13 UNSUBSCRIBE     {"agent_id", "channel_name"}
    server → client   14 ACK             {"op": 12 | 13, "agent_id", "channel_name"}
    server → client    0 DISPATCH        t=MessageCreate | AggregateUpdate, s=sequence
    client → server    1 HEARTBEAT       last sequence seen (or null)
    server → client   11 HEARTBEAT_ACK
    client → server    6 RESUME          {"token", "session_id", "seq"}
    server → client    9 INVALID_SESSION  the session is gone: identify again
    server → client   15 ERROR           {"status", "message"} (bad frame, 403, 404 …)

Every dispatch carries the session's next sequence number ``s``. A session outlives its
connection for ``RESUME_SECONDS``; a client that resumes with the last ``s`` it saw gets
every dispatch it missed, in order. The server closes a connection that sends no
heartbeat for 1.5 heartbeat intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.websockets import WebSocket, WebSocketDisconnect

from fleetcloud.api.auth import may_read
from fleetcloud.bus.base import Subscription
from fleetcloud.core import jsonish
from fleetcloud.core.errors import ApiError, BadRequest, FleetError, Forbidden
from fleetcloud.core.jsonish import to_id
from fleetcloud.core.types import CHANNEL_EVENTS, Event, Principal
from fleetcloud.platform import Platform
from fleetcloud.store import channels as repo

log = logging.getLogger("fleetcloud.gateway")

DISPATCH, HEARTBEAT, IDENTIFY, RESUME, INVALID_SESSION = 0, 1, 2, 6, 9
HELLO, HEARTBEAT_ACK, SUBSCRIBE, UNSUBSCRIBE, ACK, ERROR = 10, 11, 12, 13, 14, 15
REPLAY_LIMIT = 5_000  # dispatches kept per session for resuming
SEND_QUEUE_LIMIT = 10_000
RESUME_SECONDS = 120.0
PRIVACY_CACHE_SECONDS = 1.0  # how long a channel's is_private is trusted when fanning out
DISPATCHED_TYPES = {"MessageCreate", "AggregateUpdate", "MessageUpdate", "MessageDelete"}

ChannelKey = tuple[int, str]


@dataclass(eq=False)
class Session:
    id: str
    principal: Principal
    subscriptions: dict[ChannelKey, bool] = field(default_factory=dict)  # key -> diff_only
    seq: int = 0
    replay: deque[tuple[int, bytes]] = field(default_factory=lambda: deque(maxlen=REPLAY_LIMIT))
    outbox: asyncio.Queue[bytes | None] | None = None  # the live connection's send queue
    detached_at: float | None = None
    broken: bool = False  # lost dispatches: cannot be resumed

    def dispatch(self, kind: str, data: Any) -> None:
        self.seq += 1
        frame = jsonish.dumps({"op": DISPATCH, "t": kind, "s": self.seq, "d": data})
        if len(self.replay) == REPLAY_LIMIT:
            self.broken = self.broken or self.outbox is None
        self.replay.append((self.seq, frame))
        if self.outbox is None:
            return
        if self.outbox.qsize() >= SEND_QUEUE_LIMIT:
            self.outbox.put_nowait(None)  # too slow: drop the connection, keep the session
            self.outbox = None
            return
        self.outbox.put_nowait(frame)


class Hub:
    """One anonymous bus subscription per process, fanned out to the sessions."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.sessions: dict[str, Session] = {}
        self.watchers: dict[ChannelKey, set[Session]] = {}
        self._private: dict[ChannelKey, tuple[bool, float]] = {}  # key -> (is_private, until)
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._ready = asyncio.Event()

    async def ensure_started(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-hub")
        await self._ready.wait()

    async def _run(self) -> None:
        self._subscription = await self.platform.bus.subscribe([CHANNEL_EVENTS])
        self._ready.set()
        async with self._subscription:
            while True:
                batch = await self._subscription.next_batch(timeout=30)
                for event in batch:
                    await self.fan_out(event)
                self.expire()

    async def fan_out(self, event: Event) -> None:
        kind = event.value.get("t")
        if kind not in DISPATCHED_TYPES:
            return
        data = event.value["d"]
        channel = data.get("channel") or {}
        key = (int(channel.get("agent_id", 0)), str(channel.get("name", "")))
        for session in list(self.watchers.get(key, ())):
            if not owns(session.principal, key[0]) and await self.is_private(key):
                continue  # made private (or created private) after this reader subscribed
            if kind == "AggregateUpdate" and session.subscriptions.get(key):
                session.dispatch(kind, {k: v for k, v in data.items() if k != "aggregate"})
            else:
                session.dispatch(kind, data)

    async def is_private(self, key: ChannelKey) -> bool:
        now = time.monotonic()
        cached = self._private.get(key)
        if cached is None or cached[1] < now:
            try:
                channel = await self.platform.store.read(repo.get_channel(*key))
            except FleetError:
                log.warning("cannot tell whether %s is private; not dispatching it", key)
                return True
            if len(self._private) > 100_000:
                self._private.clear()
            cached = self._private[key] = (
                channel is not None and channel.is_private,
                now + PRIVACY_CACHE_SECONDS,
            )
        return cached[0]

    def watch(self, session: Session, key: ChannelKey, diff_only: bool) -> None:
        session.subscriptions[key] = diff_only
        self.watchers.setdefault(key, set()).add(session)

    def unwatch(self, session: Session, key: ChannelKey) -> None:
        session.subscriptions.pop(key, None)
        watchers = self.watchers.get(key)
        if watchers is not None:
            watchers.discard(session)
            if not watchers:
                del self.watchers[key]

    def drop(self, session: Session) -> None:
        for key in list(session.subscriptions):
            self.unwatch(session, key)
        self.sessions.pop(session.id, None)

    def expire(self) -> None:
        now = time.monotonic()
        for session in list(self.sessions.values()):
            gone = session.detached_at is not None and now - session.detached_at > RESUME_SECONDS
            if gone or (session.broken and session.outbox is None):
                self.drop(session)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def owns(principal: Principal, agent_id: int) -> bool:
    """May ``principal`` write to (so read even the private channels of) ``agent_id``?
    Subscribing has already checked that the agent is in the principal's organisation."""
    return principal.is_admin or principal.agent_id == agent_id or agent_id in principal.scopes


def hub_of(app: Starlette) -> Hub:
    hub: Hub | None = getattr(app.state, "hub", None)
    if hub is None:
        hub = app.state.hub = Hub(app.state.platform)
    return hub


async def close_all(app: Starlette) -> None:
    hub: Hub | None = getattr(app.state, "hub", None)
    if hub is not None:
        await hub.close()


def frame(op: int, data: Any = None) -> bytes:
    return jsonish.dumps({"op": op, "d": data})


async def send(websocket: WebSocket, payload: bytes) -> None:
    await websocket.send_text(payload.decode())


class Connection:
    """One websocket: handshake, then frames in and dispatches out until it drops."""

    def __init__(self, websocket: WebSocket, hub: Hub) -> None:
        self.websocket = websocket
        self.hub = hub
        self.platform = hub.platform
        self.interval_ms = self.platform.settings.heartbeat_interval_ms
        self.session: Session | None = None
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()  # its session's sends

    async def run(self) -> None:
        await self.websocket.accept()
        await send(self.websocket, frame(HELLO, {"heartbeat_interval": self.interval_ms}))
        self.platform.metrics.gateway_connections.inc()
        try:
            async with asyncio.TaskGroup() as tasks:
                reader = tasks.create_task(self.read_loop(), name="gateway-read")
                writer = tasks.create_task(self.write_loop(), name="gateway-write")
                await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
                reader.cancel()
                writer.cancel()
        except* (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.platform.metrics.gateway_connections.dec()
            if self.session is not None and self.session.outbox in (self.outbox, None):
                self.session.outbox = None  # unless a resume moved it to another connection
                self.session.detached_at = time.monotonic()
            with contextlib.suppress(Exception):
                await self.websocket.close()

    async def read_loop(self) -> None:
        timeout = self.interval_ms / 1000 * 1.5
        while True:
            try:
                message = await asyncio.wait_for(self.websocket.receive(), timeout)
            except TimeoutError:
                await self.websocket.close(4009, "no heartbeat")
                return
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            try:  # JSON in a text frame, or (tolerated) in a binary one
                await self.handle(jsonish.loads(message.get("text") or message.get("bytes") or ""))
            except ApiError as exc:
                await send(self.websocket, frame(ERROR, exc.to_json()))
            except (ValueError, TypeError, KeyError) as exc:
                await send(self.websocket, frame(ERROR, {"status": 400, "message": str(exc)}))

    async def write_loop(self) -> None:
        while True:
            payload = await self.outbox.get()
            if payload is None:  # too slow, or the session was resumed on another connection
                await self.websocket.close(4008, "resume to catch up")
                return
            await send(self.websocket, payload)

    async def handle(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("op"), int):
            raise BadRequest('frames are JSON objects like {"op": 1, "d": null}')
        op, data = message["op"], message.get("d")
        if op == HEARTBEAT:
            await send(self.websocket, frame(HEARTBEAT_ACK))
        elif op == IDENTIFY:
            await self.identify(data)
        elif op == RESUME:
            await self.resume(data)
        elif op in (SUBSCRIBE, UNSUBSCRIBE):
            await self.subscription(op, data)
        else:
            raise BadRequest(f"unknown op {op}")

    async def identify(self, data: Any) -> None:
        principal = await self.principal(data)
        await self.hub.ensure_started()
        session = Session(secrets.token_hex(16), principal)
        self.hub.sessions[session.id] = session
        self.attach(session)
        session.dispatch(
            "Ready",
            {
                "session_id": session.id,
                "agent_id": str(principal.agent_id),
                "organisation_id": str(principal.organisation_id),
            },
        )

    async def resume(self, data: Any) -> None:
        principal = await self.principal(data)
        session = self.hub.sessions.get(str(data.get("session_id")))
        seq = data.get("seq") or 0
        stale = session is None or session.broken or session.principal != principal
        if session is not None and not stale and session.replay and session.replay[0][0] > seq + 1:
            stale = True  # what the client missed is no longer held
        if stale or session is None:
            await send(self.websocket, frame(INVALID_SESSION, False))
            return
        missed = [payload for s, payload in session.replay if s > seq]
        self.attach(session)
        for payload in missed:
            self.outbox.put_nowait(payload)
        session.dispatch("Resumed", {"session_id": session.id, "replayed": len(missed)})

    def attach(self, session: Session) -> None:
        if self.session is not None and self.session is not session:
            self.session.outbox = None
            self.hub.drop(self.session)
        if session.outbox is not None and session.outbox is not self.outbox:
            session.outbox.put_nowait(None)  # resumed while its old connection looked alive
        session.outbox = self.outbox
        session.detached_at = None
        self.session = session

    async def principal(self, data: Any) -> Principal:
        if not isinstance(data, dict) or not isinstance(data.get("token"), str):
            raise BadRequest('identify with {"op": 2, "d": {"token": "…"}}')
        return await self.platform.auth.principal(data["token"])

    async def subscription(self, op: int, data: Any) -> None:
        if self.session is None:
            raise Forbidden("identify before subscribing")
        if not isinstance(data, dict) or not isinstance(data.get("channel_name"), str):
            raise BadRequest("subscribe with {agent_id, channel_name}")
        principal = self.session.principal
        agent = await self.platform.auth.agent(principal, to_id(data.get("agent_id"), "agent_id"))
        key = (agent.id, data["channel_name"])
        if op == SUBSCRIBE:
            channel = await self.platform.store.read(repo.get_channel(*key))
            if not may_read(principal, agent, channel):
                raise Forbidden(f"channel {key[1]!r} is private to agent {agent.id}")
            self.hub.watch(self.session, key, bool(data.get("diff_only")))
        else:
            self.hub.unwatch(self.session, key)
        ack = {"op": op, "agent_id": str(agent.id), "channel_name": key[1]}
        await send(self.websocket, frame(ACK, ack))


async def endpoint(websocket: WebSocket) -> None:
    await Connection(websocket, hub_of(websocket.app)).run()
