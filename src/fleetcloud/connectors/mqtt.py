"""The MQTT connector: commands out to devices, uplinks and acknowledgements in.

``fleetcloud serve --mqtt-url mqtt://USER:PASSWORD@HOST:PORT`` runs it. Its tasks, all in
one ``TaskGroup``:

- **commands** — loads the commands still pending over MQTT from the store, then consumes
  the ``device_commands`` topic as consumer group ``mqtt-connector``: each command is
  recorded (``QUEUED``, idempotently by ``request_id``) before the group commits, so a
  command on the bus is never lost, and MQTT ones join their device's queue.
- **one task per device with work** — delivers the device's commands in order
  (``Delivery``: expiry, parser, then publish to ``metadata.topic`` with
  ``qos``/``retain``). What counts as delivered is ``metadata.ack``: ``"broker"`` (the
  default at QoS ≥ 1) — the broker's PUBACK; ``"device"`` — the device's message on
  ``fleetcloud/<id>/commands/ack``, resent with backoff (or at once when the device says
  ``online`` on ``fleetcloud/<id>/status``) until it comes or the command expires;
  ``"none"`` (the default at QoS 0) — stays ``SENT`` unless the device acknowledges.
  Commands settled by the broker (or by nothing) are pipelined: up to ``WINDOW`` of a
  device's publishes await their PUBACKs at once, recorded in publish order; if the
  connection fails, the unacknowledged ones go again, oldest first, before anything newer.
  A command that waits for the device's ack is sent alone. While the broker is
  unreachable commands wait (still ``QUEUED``/``SENT``) and go out after the reconnect.
- **broker** — one aiomqtt connection (persistent session, TCP_NODELAY), reconnecting
  with backoff; it only files what arrives, so it never waits on the database.
- **inbound** — turns what devices published into channel messages (JSON, or the device's
  parser ``parse``) and command transitions, a batch per ``store.publish``.
- **expiry** — moves pending commands past ``expires_at`` to ``EXPIRED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import orjson

from fleetcloud.commands import lifecycle
from fleetcloud.commands.core.models import PENDING, CommandMessage, CommandStatus, InvalidCommand
from fleetcloud.commands.delivery import DeviceSettings
from fleetcloud.commands.lifecycle import Change, StoredCommand
from fleetcloud.commands.runner import ParserError
from fleetcloud.commands.service import command_topic_from_env
from fleetcloud.connectors import topics
from fleetcloud.connectors.base import Committer, Connector
from fleetcloud.connectors.paho_speedups import Publisher, Reader, skip_topic_filters
from fleetcloud.core.errors import ApiError, BusError, ConfigError, FleetError
from fleetcloud.core.types import Event
from fleetcloud.platform import Platform
from fleetcloud.store.agents import now_ms
from fleetcloud.store.channels import PublishItem

log = logging.getLogger("fleetcloud.connectors.mqtt")


CLIENT_LOG = logging.getLogger("fleetcloud.connectors.mqtt.client")  # aiomqtt's and paho's

PROTOCOL = "mqtt"
GROUP = "mqtt-connector"
PUBLISH_TIMEOUT = 10.0
HANDLED_MEMORY = 100_000  # delivered request ids the reconciler skips
COMMIT_INTERVAL = 0.2  # seconds between consumer-group commits while busy
WINDOW = 16  # a device's publishes awaiting their PUBACK at most
INBOUND_BATCH = 2_000
INBOUND_LIMIT = 50_000  # queued inbound messages before reading the broker pauses
TOPIC_MEMORY = 100_000  # parsed topics remembered (devices publish on a few each)
ACK_STATUSES = {
    "DELIVERED": CommandStatus.DELIVERED,
    "SUCCEEDED": CommandStatus.SUCCEEDED,
    "FAILED": CommandStatus.FAILED,
}
NO_TOPIC = "metadata.topic is required for MQTT commands"


@dataclass
class MqttOptions:
    url: str
    command_topic: str = field(default_factory=command_topic_from_env)
    group: str = GROUP
    client_id: str = "fleetcloud-mqtt-connector"
    prefix: str = topics.PREFIX
    ack_timeout: float = 10.0  # first resend of an unacknowledged command ("device" acks)
    max_ack_timeout: float = 120.0
    expiry_interval: float = 1.0
    reconcile_interval: float = 5.0
    parser_workers: int = 2
    parser_time_limit: float = 2.0
    parsers_dir: str | None = None
    keepalive: int = 30


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None


def parse_url(url: str) -> BrokerAddress:
    """``mqtt://[USER[:PASSWORD]@]HOST[:PORT]`` (port 1883 by default)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ConfigError(f"unsupported MQTT URL {url!r}: use mqtt://[USER:PASSWORD@]HOST:PORT")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return BrokerAddress(parts.hostname, parts.port or 1883, username, password)


# ---------------------------------------------------------------- per-device state


@dataclass(eq=False)
class Flight:
    """A command between its publish and the acknowledgement that ends its wait."""

    command: StoredCommand
    sent: bool = False  # its SENT transition has been handed to the tracker
    ack: Change | None = None  # an ack that arrived before that
    acked: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class Launch:
    """A command whose bytes are ready, and once published, its publish in flight."""

    command: StoredCommand
    topic: str
    data: bytes
    qos: int
    retain: bool
    ack: str
    flight: Flight | None = None
    publish: asyncio.Future[Any] | None = None
    connection: Connection | None = None


@dataclass(eq=False)
class DeviceQueue:
    agent_id: int
    items: deque[StoredCommand] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    flight: Flight | None = None  # the command waiting for a device ack, if any
    window: deque[Launch] = field(default_factory=deque)  # published, broker ack pending
    again: deque[Launch] = field(default_factory=deque)  # to publish again, before items


@dataclass(slots=True)
class Inbound:
    where: topics.DeviceTopic
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(eq=False)
class Connection:
    client: aiomqtt.Client
    publisher: Publisher | None = None
    lost: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def publish(self, topic: str, data: bytes, qos: int, retain: bool) -> asyncio.Future[Any]:
        """Start a publish; the future settles with the broker's PUBACK (QoS 1) or the
        write (QoS 0). Its wait is the caller's to bound (``PUBLISH_TIMEOUT``)."""
        if self.publisher is not None:
            return self.publisher.publish(topic, data, qos, retain)
        return asyncio.ensure_future(
            self.client.publish(topic, data, qos=qos, retain=retain, timeout=PUBLISH_TIMEOUT)
        )


class MqttConnector(Connector):
    """``async with MqttConnector(platform, MqttOptions(url=...)):`` — see the module doc."""

    label = "MQTT connector"

    def __init__(self, platform: Platform, options: MqttOptions) -> None:
        super().__init__(platform, options)
        self.options = options
        self.broker = parse_url(options.url)
        self.queues: dict[int, DeviceQueue] = {}
        self.flights: dict[str, Flight] = {}
        self.queued: set[str] = set()  # request ids in the device queues
        self.handled: set[str] = set()  # recently delivered (their record may lag behind)
        self._handled_order: deque[str] = deque()
        self.settled: set[str] = set()  # queued commands that ended out of turn (acks, expiry)
        self.connection: Connection | None = None
        self.connected = asyncio.Event()
        self.loaded = asyncio.Event()  # pending commands loaded, consuming the bus
        self._inbound: deque[Inbound] = deque()
        self._inbound_ready = asyncio.Event()
        self._inbound_room = asyncio.Event()
        self._reader: Reader | None = None  # the fast reading side of the connection
        self._topics: dict[str, topics.DeviceTopic | None] = {}
        self.uplinks = 0  # channel messages written from uplinks
        self.dropped = 0  # inbound messages refused (unknown device, bad payload …)

    # ------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        await self._open()
        self._spawn(self._broker_loop(), "mqtt-broker")
        self._spawn(self._commands_loop(), "mqtt-commands")
        self._spawn(self._inbound_loop(), "mqtt-inbound")
        self._spawn(self._expiry_loop(), "mqtt-expiry")
        self._spawn(self._reconcile_loop(), "mqtt-reconcile")

    async def wait_connected(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    # ------------------------------------------------------------ commands in

    async def _consume(self) -> None:
        await self._load_pending()
        bus = self.platform.bus
        subscription = await bus.subscribe(
            [self.options.command_topic], self.options.group, from_beginning=True
        )
        async with subscription:
            committer = Committer(subscription, COMMIT_INTERVAL)
            try:
                while events := await subscription.next_batch(timeout=0):  # catch up first
                    committer.taken(await self.take(events))
                    committer.poll()
                self.loaded.set()
                while True:
                    events = await subscription.next_batch(timeout=COMMIT_INTERVAL)
                    if events:
                        committer.taken(await self.take(events))
                    committer.poll()
                    if not events and getattr(subscription, "closed", False):
                        raise BusError(f"the subscription to {self.options.command_topic} closed")
                    await asyncio.sleep(0)  # stay cancellable whatever the bus returns
            finally:
                await committer.close()

    async def _reconcile_loop(self) -> None:
        """Every ``reconcile_interval``, queue QUEUED commands this connector has not
        seen: a safety net for a bus event that did not arrive."""
        while True:
            await asyncio.sleep(self.options.reconcile_interval)
            if self.loaded.is_set():
                try:
                    await self._load_pending(queued_only=True)
                except FleetError as exc:
                    log.warning("reconciling pending commands failed: %s", exc.message)

    async def _load_pending(self, *, queued_only: bool = False) -> None:
        cursor = (0, 0)
        statuses = (CommandStatus.QUEUED,) if queued_only else PENDING
        while True:
            page = await self.store.read(
                lifecycle.pending(PROTOCOL, after=cursor, limit=500, statuses=statuses)
            )
            for command in page:
                if not (queued_only and command.request_id in self.handled):
                    self._enqueue(command)
            if len(page) < 500:
                return
            last = page[-1]
            cursor = (last.agent_id or 0, last.seq)

    async def take(self, events: Sequence[Event]) -> list[asyncio.Future[Any]]:
        """Queue the MQTT commands among ``events`` for their devices, and record the new
        ones; returns the pending record (the bus may be committed once it is written).

        A new command is delivered without waiting for its record: the record goes
        through the tracker ahead of the command's SENT, so the order is kept."""
        ids = [e.value.get("request_id") for e in events]
        existing = await self.store.read(lifecycle.load(i for i in ids if isinstance(i, str)))
        # Commands recorded already (pushed inside the server) need no second validation.
        found: list[StoredCommand | CommandMessage | None] = [
            existing[i] if isinstance(i, str) and i in existing else self._valid(e)
            for e, i in zip(events, ids, strict=True)
        ]
        fresh = {m.request_id: m for m in found if isinstance(m, CommandMessage)}
        devices = await self.settings.get_many(
            int(m.device_id)
            for m in fresh.values()
            if m.device_id.isdigit() and int(m.device_id) < 2**63
        )
        for item in found:  # in the order they came: a device's order is kept
            command = _provisional(item, devices) if isinstance(item, CommandMessage) else item
            if command is not None and command.protocol == PROTOCOL and command.status in PENDING:
                self._enqueue(command)
        return [self.tracker.record_soon(list(fresh.values()))] if fresh else []

    def _valid(self, event: Event) -> CommandMessage | None:
        try:
            return CommandMessage.from_dict(event.value)
        except InvalidCommand as exc:
            log.warning("dropping an invalid command from the bus: %s", exc.message)
            return None

    def _enqueue(self, command: StoredCommand) -> None:
        if command.agent_id is None:
            return
        queue = self.queues.get(command.agent_id)
        if queue is None:
            queue = self.queues[command.agent_id] = DeviceQueue(command.agent_id)
        if command.request_id in self.queued:
            return
        self.queued.add(command.request_id)
        _insert(queue.items, command)
        if queue.task is None:
            queue.task = self._spawn(self._device_loop(queue), f"mqtt-device-{queue.agent_id}")

    # ------------------------------------------------------------ commands out

    async def _device_loop(self, queue: DeviceQueue) -> None:
        """Deliver a device's commands in order. Commands the broker's PUBACK settles (or
        nothing, at QoS 0) are pipelined: up to ``WINDOW`` are published before the
        oldest one's PUBACK is awaited, in publish order. One connection keeps them in
        order; if it fails, the unacknowledged ones are published again, oldest first.
        A command that waits for the device's own ack goes alone, after the window."""
        try:
            while True:
                self._land_ready(queue)
                room = (queue.items or queue.again) and len(queue.window) < WINDOW
                if room and await self._next(queue):
                    continue
                if not queue.window:  # (_next only declines while the window is in use)
                    return
                await self._land(queue)
        finally:
            for launch in queue.window:
                self._drop(launch)
            queue.window.clear()
            queue.task = None
            if not queue.items and not queue.again:
                self.queues.pop(queue.agent_id, None)

    async def _next(self, queue: DeviceQueue) -> bool:
        """Publish the device's next command (or deliver it, if it waits for the device's
        ack and the window is empty); False if it must wait for the window to empty."""
        if queue.again:
            launch = queue.again.popleft()
            if launch.command.request_id in self.settled:
                self._done(launch.command)
                return True
            try:
                return await self._publish_next(queue, launch)
            except FleetError as exc:  # recording its expiry failed: try again
                log.warning("delivering %s failed: %s", launch.command.request_id, exc.message)
                queue.again.appendleft(launch)
                await asyncio.sleep(1.0)
                return True
        command = queue.items[0]
        if command.request_id in self.settled:
            self._done(queue.items.popleft())
            return True
        if _ack_mode(command) == "device":
            if queue.window:
                return False
            queue.items.popleft()
            await self._guarded(queue, command, self._deliver(queue, command))
            return True
        queue.items.popleft()
        await self._guarded(queue, command, self._launch(queue, command))
        return True

    async def _guarded(self, queue: DeviceQueue, command: StoredCommand, step: Any) -> None:
        try:
            finished = await step
        except FleetError as exc:  # the store failed: try this command again
            log.warning("delivering %s failed: %s", command.request_id, exc.message)
            queue.items.appendleft(command)
            await asyncio.sleep(1.0)
            return
        if finished is not False:
            self._done(command)

    def _done(self, command: StoredCommand) -> None:
        self.queued.discard(command.request_id)
        self._handled(command.request_id)
        self.settled.discard(command.request_id)

    async def _launch(self, queue: DeviceQueue, command: StoredCommand) -> bool:
        """Prepare a command and publish it into the window; True if it ended here
        instead (no topic, expired, parser failure), False once it is in flight."""
        topic = command.metadata.get("topic")
        if not isinstance(topic, str) or not topic:
            await self.delivery.fail(command, NO_TOPIC)
            return True
        data = await self.delivery.prepare(command)
        if data is None:
            return True
        qos = int(command.metadata.get("qos", 1))
        retain = bool(command.metadata.get("retain", False))
        launch = Launch(command, topic, data, qos, retain, _ack_mode(command))
        await self._publish_next(queue, launch)  # (or it waits in queue.again)
        return False

    async def _publish_next(self, queue: DeviceQueue, launch: Launch) -> bool:
        """Start ``launch``'s publish at the end of the window, once there is a broker
        connection (or record that the command expired while there was none). False if
        the window's publishes went out on an earlier connection: they must settle (or
        go again) first, so ``launch`` waits at the front of ``queue.again``."""
        connection = await self._connection_for(launch.command)
        if connection is None:
            await self.delivery.expire_if_due(launch.command)
            self._done(launch.command)
            return True
        if queue.window and queue.window[-1].connection is not connection:
            queue.again.appendleft(launch)
            return False
        request_id = launch.command.request_id
        launch.flight = self.flights[request_id] = Flight(launch.command)
        launch.connection = connection
        launch.publish = connection.publish(launch.topic, launch.data, launch.qos, launch.retain)
        queue.window.append(launch)
        return True

    def _land_ready(self, queue: DeviceQueue) -> None:
        """Record the oldest publishes that have already completed, without waiting."""
        while queue.window and _settled(queue.window[0]):
            self._landed(queue.window.popleft())

    async def _land(self, queue: DeviceQueue) -> None:
        """Wait for the oldest publish in the window and record it; if its connection
        failed, queue the window to be published again, in order."""
        launch = queue.window[0]
        assert launch.publish is not None
        assert launch.connection is not None
        lost = launch.connection.lost
        await asyncio.wait(
            (launch.publish, lost), timeout=PUBLISH_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if _settled(launch):
            self._landed(queue.window.popleft())
            return
        if launch.publish.done() and not launch.publish.cancelled():  # it failed
            log.info("publish to %s failed: %r", launch.topic, launch.publish.exception())
        elif lost.done():
            log.info("publish to %s cut off: the connection was lost", launch.topic)
        else:
            log.info("publish to %s: no PUBACK in %g s", launch.topic, PUBLISH_TIMEOUT)
        for pending in queue.window:
            self._drop(pending)
        queue.again.extendleft(reversed(queue.window))
        queue.window.clear()
        with contextlib.suppress(TimeoutError):  # until the broker loop notices
            await asyncio.wait_for(asyncio.shield(lost), 1.0)

    def _landed(self, launch: Launch) -> None:
        assert launch.flight is not None
        self.flights.pop(launch.command.request_id, None)
        self._sent(
            launch.flight, broker_ack=launch.ack == "broker" and launch.qos > 0, ack=launch.ack
        )
        self._done(launch.command)

    def _drop(self, launch: Launch) -> None:
        """Forget a publish that will not be recorded (it is sent again, or the device
        task stops)."""
        self.flights.pop(launch.command.request_id, None)
        publish, launch.publish, launch.flight = launch.publish, None, None
        if publish is not None and not publish.done():
            publish.cancel()
        elif publish is not None and not publish.cancelled():
            publish.exception()  # retrieved: a failure here is not worth a warning

    async def _deliver(self, queue: DeviceQueue, command: StoredCommand) -> None:
        """Deliver one command until it no longer needs this connector."""
        topic = command.metadata.get("topic")
        if not isinstance(topic, str) or not topic:
            await self.delivery.fail(command, NO_TOPIC)
            return
        qos = int(command.metadata.get("qos", 1))
        retain = bool(command.metadata.get("retain", False))
        ack = _ack_mode(command)
        data: bytes | None = None
        wait = self.options.ack_timeout
        while True:
            if await self.delivery.expire_if_due(command):
                return
            connection = await self._connection_for(command)
            if connection is None:
                continue  # it expired while the broker was away
            if data is None:
                data = await self.delivery.prepare(command)
                if data is None:
                    return
            flight = queue.flight = self.flights[command.request_id] = Flight(command)
            try:
                if not await self._publish(connection, topic, data, qos, retain):
                    with contextlib.suppress(TimeoutError):  # until the broker loop notices
                        await asyncio.wait_for(asyncio.shield(connection.lost), 1.0)
                    continue
                if self._sent(flight, broker_ack=ack == "broker" and qos > 0, ack=ack):
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(flight.wake.wait(), self._wait_for(command, wait))
                if flight.acked:
                    return
                wait = min(wait * 2, self.options.max_ack_timeout)
            finally:
                queue.flight = None
                self.flights.pop(command.request_id, None)

    def _sent(self, flight: Flight, *, broker_ack: bool, ack: str) -> bool:
        """Record the send; True if the command needs no device acknowledgement wait."""
        then, flight.sent = flight.ack, True
        self.delivery.record_sent(flight.command, delivered=broker_ack, then=then)
        return then is not None or ack != "device"

    def _wait_for(self, command: StoredCommand, wait: float) -> float:
        if command.expires_ms is None:
            return wait
        return max(min(wait, (command.expires_ms - now_ms()) / 1000), 0.0)

    async def _connection_for(self, command: StoredCommand) -> Connection | None:
        """The broker connection, waiting for one; None if the command expired first."""
        while self.connection is None:
            timeout = None
            if command.expires_ms is not None:
                timeout = max((command.expires_ms - now_ms()) / 1000, 0.0)
            try:
                await asyncio.wait_for(self.connected.wait(), timeout)
            except TimeoutError:
                return None
        return self.connection

    async def _publish(
        self, connection: Connection, topic: str, data: bytes, qos: int, retain: bool
    ) -> bool:
        """Publish and wait for the broker (QoS ≥ 1); False if the connection failed (or
        the broker did not answer in ``PUBLISH_TIMEOUT``)."""
        publish = connection.publish(topic, data, qos, retain)
        try:
            await asyncio.wait(
                (publish, connection.lost),
                timeout=PUBLISH_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if not publish.done():
                publish.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await publish
        if publish.cancelled():
            if connection.lost.done():
                log.info("publish to %s cut off: the connection was lost", topic)
            else:
                log.info("publish to %s: no PUBACK in %g s", topic, PUBLISH_TIMEOUT)
            return False
        error = publish.exception()
        if error is not None:
            log.info("publish to %s failed: %r", topic, error)
        return error is None

    # ------------------------------------------------------------ the broker

    def _client(self) -> aiomqtt.Client:
        nodelay = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username=self.broker.username,
            password=self.broker.password,
            identifier=self.options.client_id,
            clean_session=False,
            keepalive=self.options.keepalive,
            max_inflight_messages=1_000,
            socket_options=[nodelay],
            logger=CLIENT_LOG,
        )
        # One publish in flight per device is the normal state here, not a warning.
        client.pending_calls_threshold = 1 << 30
        return client

    async def _broker_loop(self) -> None:
        backoff = 0.1
        while True:
            connection: Connection | None = None
            try:
                async with self._client() as client:
                    reader = Reader(client, asyncio.get_running_loop(), self._file)
                    self._reader = reader if reader.install() else None
                    skip_topic_filters(client._client)
                    publisher = Publisher(client, asyncio.get_running_loop())
                    connection = Connection(client, publisher if publisher.install() else None)
                    subscriptions = [(t, 1) for t in topics.subscriptions(self.options.prefix)]
                    await client.subscribe(subscriptions)
                    self._connected(connection)
                    backoff = 0.1
                    if self._reader is not None:
                        await _until_lost(client)
                    else:
                        await self._receive(client)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT broker %s:%d: %s", self.broker.host, self.broker.port, exc)
            finally:
                self._reader = None
                if connection is not None and not connection.lost.done():
                    connection.lost.set_result(None)
                self.connection = None
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _connected(self, connection: Connection) -> None:
        log.info("connected to MQTT broker %s:%d", self.broker.host, self.broker.port)
        self.connection = connection
        self.connected.set()
        for queue in self.queues.values():  # resend what waits for an ack, now
            if queue.flight is not None:
                queue.flight.wake.set()

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Read through aiomqtt (when the ``Reader`` could not take over)."""
        pending: asyncio.Queue[aiomqtt.Message] | None = getattr(client, "_queue", None)
        async for message in client.messages:
            self._file_message(message)
            # Take what has already arrived without a task switch per message.
            while pending is not None and not pending.empty():
                self._file_message(pending.get_nowait())
            while len(self._inbound) > INBOUND_LIMIT:
                self._inbound_room.clear()
                await self._inbound_room.wait()

    def _file_message(self, message: aiomqtt.Message) -> None:
        payload = bytes(message.payload)  # paho's messages carry bytes
        self._file(message.topic.value, payload, message.qos, bool(message.retain))

    def _file(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """One message from the broker: queued for ``handle`` (status ones acted on now)."""
        try:
            where = self._topics[topic]
        except KeyError:
            if len(self._topics) >= TOPIC_MEMORY:
                self._topics.clear()
            where = self._topics[topic] = topics.parse_topic(topic, self.options.prefix)
        if where is None:
            self.dropped += 1
            return
        if where.kind == "status":
            self._presence(where.agent_id, payload)
            return
        self._inbound.append(Inbound(where, topic, payload, qos, retain))
        self._inbound_ready.set()
        if len(self._inbound) > INBOUND_LIMIT and self._reader is not None:
            self._reader.pause()

    def _presence(self, agent_id: int, payload: bytes) -> None:
        """A device said it is online: resend its waiting command now."""
        if payload.strip().lower() not in (b"online", b'"online"', b'{"status":"online"}'):
            return
        queue = self.queues.get(agent_id)
        if queue is not None and queue.flight is not None:
            queue.flight.wake.set()

    # ------------------------------------------------------------ uplinks and acks

    async def _inbound_loop(self) -> None:
        while True:
            await self._inbound_ready.wait()
            self._inbound_ready.clear()
            while self._inbound:
                count = min(len(self._inbound), INBOUND_BATCH)
                batch = [self._inbound.popleft() for _ in range(count)]
                self._inbound_room.set()
                if self._reader is not None and self._reader.paused:
                    self._reader.resume()
                try:
                    await self.handle(batch)
                except FleetError as exc:
                    log.error("could not store %d inbound messages: %s", len(batch), exc.message)

    async def handle(self, batch: Sequence[Inbound]) -> None:
        """Turn one batch of device publishes into channel messages and transitions."""
        settings = await self.settings.get_many({m.where.agent_id for m in batch})
        values = await self._decode_all(batch, settings)
        items: list[PublishItem] = []
        changes: list[Change] = []
        for message, value in zip(batch, values, strict=True):
            if value is None:
                self.dropped += 1
            elif message.where.kind == "uplink":
                agent_id = message.where.agent_id
                items.append(PublishItem(agent_id, message.where.channel, value, agent_id))
            else:
                change = self._ack(message.where.agent_id, value)
                if change is not None:
                    changes.append(change)
        if items:
            await self.store.publish(items)
            self.uplinks += len(items)
        if changes:
            changed = await self.tracker.apply(changes)
            self._settle(r for r, c in changed.items() if c.status not in PENDING)

    async def _decode_all(
        self, batch: Sequence[Inbound], settings: dict[int, DeviceSettings | None]
    ) -> list[Any]:
        """Each publish's JSON value, or None if it is refused: JSON as it is, unless the
        device has a parser (uplinks always go through it; acks only if not JSON)."""
        values: list[Any] = [None] * len(batch)
        parse: list[int] = []
        for index, message in enumerate(batch):
            device = settings.get(message.where.agent_id)
            if device is None:
                continue  # not a device fleetcloud knows
            if device.parser_script_ref is None or message.where.kind == "ack":
                try:
                    values[index] = orjson.loads(message.payload)
                    continue
                except orjson.JSONDecodeError:
                    if device.parser_script_ref is None:
                        log.debug("dropping a non-JSON publish on %s", message.topic)
                        continue
            parse.append(index)
        if parse:
            parsed = await asyncio.gather(
                *(self._parse(batch[i], settings[batch[i].where.agent_id]) for i in parse)
            )
            for index, value in zip(parse, parsed, strict=True):
                values[index] = value
        return values

    async def _parse(self, message: Inbound, settings: DeviceSettings | None) -> Any:
        if settings is None:
            return None
        metadata = {
            "topic": message.topic,
            "kind": message.where.kind,
            "channel": message.where.channel,
            "agent_id": str(message.where.agent_id),
            "qos": message.qos,
            "retain": message.retain,
        }
        try:
            return await self.delivery.parse_uplink(settings, message.payload, metadata)
        except (ParserError, ApiError) as exc:
            log.info("dropping a publish on %s: %s", message.topic, exc.message)
            return None

    def _ack(self, agent_id: int, value: Any) -> Change | None:
        """A device's acknowledgement as a change; an ack that overtook its command's
        SENT record is handed to the delivering task instead (returns None)."""
        if not isinstance(value, dict) or not isinstance(value.get("request_id"), str):
            return None
        status = ACK_STATUSES.get(str(value.get("status", "DELIVERED")).upper())
        if status is None:
            return None
        reason = value.get("reason")
        reason = str(reason)[:500] if reason is not None else None
        request_id = value["request_id"]
        change = Change(request_id, status, reason, agent_id=agent_id)
        flight = self.flights.get(request_id)
        if flight is None or flight.command.agent_id != agent_id:
            return change
        flight.acked = True
        flight.wake.set()
        if not flight.sent:
            flight.ack = change
            return None
        return change

    def _handled(self, request_id: str) -> None:
        self.handled.add(request_id)
        self._handled_order.append(request_id)
        while len(self._handled_order) > HANDLED_MEMORY:
            self.handled.discard(self._handled_order.popleft())

    def _settle(self, request_ids: Iterable[str]) -> None:
        """Commands that ended out of turn: their device task will skip them."""
        self.settled.update(r for r in request_ids if r in self.queued)

    # ------------------------------------------------------------ expiry

    async def _expiry_loop(self) -> None:
        while True:
            try:
                expired = await self.store.write(lifecycle.expire_due(now_ms()))
            except FleetError as exc:
                log.warning("expiry sweep failed: %s", exc.message)
                expired = {}
            self._settle(expired)
            for request_id in expired:
                flight = self.flights.get(request_id)
                if flight is not None:
                    flight.wake.set()
            await asyncio.sleep(self.options.expiry_interval)


async def _until_lost(client: aiomqtt.Client) -> None:
    """Wait while the client is connected; raise ``MqttError`` when it is not (as reading
    ``client.messages`` does)."""
    lost: asyncio.Future[None] = client._disconnected
    try:
        await asyncio.shield(lost)
    except aiomqtt.MqttError:
        raise
    except Exception as exc:
        raise aiomqtt.MqttError(f"disconnected: {exc!r}") from exc
    raise aiomqtt.MqttError("disconnected")


def _ack_mode(command: StoredCommand) -> str:
    """What settles a command: ``broker`` (PUBACK), ``device`` or ``none`` (module doc)."""
    qos = int(command.metadata.get("qos", 1))
    return str(command.metadata.get("ack") or ("broker" if qos else "none"))


def _settled(launch: Launch) -> bool:
    """Whether ``launch``'s publish completed without an error."""
    publish = launch.publish
    return (
        publish is not None
        and publish.done()
        and not publish.cancelled()
        and publish.exception() is None
    )


def _insert(items: deque[StoredCommand], command: StoredCommand) -> None:
    """Queue ``command`` in ``seq`` order (a command picked up late — by the reconciler —
    goes before later ones still waiting); one not yet recorded (seq 0) goes last."""
    if command.seq and items and items[-1].seq > command.seq:
        for index, queued in enumerate(items):
            if queued.seq > command.seq:
                items.insert(index, command)
                return
    items.append(command)


def _provisional(
    message: CommandMessage, devices: dict[int, DeviceSettings | None]
) -> StoredCommand | None:
    """A command as it will be recorded, for delivery before the record is written;
    None for a device fleetcloud does not know (it is recorded FAILED)."""
    device = devices.get(int(message.device_id)) if message.device_id.isdigit() else None
    if device is None:
        return None
    return lifecycle.stored(
        message,
        seq=0,
        organisation_id=device.organisation_id,
        agent_id=device.agent_id,
        author_id=None,
        status=CommandStatus.QUEUED,
    )


def mqtt_service(options: MqttOptions) -> Any:
    """A ``create_app`` service factory: ``services=[mqtt_service(MqttOptions(url))]``."""

    def start(platform: Platform) -> MqttConnector:
        return MqttConnector(platform, options)

    return start
