"""``PusherService``: puts commands on the ``device_commands`` topic (the seed's API).

Two ways to run it:

- **Kafka** — ``PusherService(kafka_bootstrap_servers="host:9092",
  command_topic="device_commands")`` (or the env vars ``KAFKA_BOOTSTRAP_SERVERS`` and
  ``DEVICE_COMMAND_TOPIC``) produces each command as JSON to the topic, keyed by device id
  so a device's commands stay in order. A fleetcloud server started with
  ``--bus kafka://host:9092`` consumes the topic: its connectors record each command
  (``QUEUED``) when they first see it, idempotently by ``request_id``.
- **Embedded** — ``PusherService(platform=platform)`` (what the HTTP API uses) records the
  command ``QUEUED`` and puts it on the platform's bus in one transaction (the outbox), so
  it can be queried at once and is never lost.

``push_command`` returns True once the command is durably on its way (acknowledged by
Kafka, or committed), False if it could not be (logged). An invalid command raises
``InvalidCommand``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from fleetcloud.commands import lifecycle
from fleetcloud.commands.core.models import CommandMessage
from fleetcloud.core.errors import FleetError

if TYPE_CHECKING:
    from fleetcloud.bus.base import Bus
    from fleetcloud.commands.lifecycle import StoredCommand
    from fleetcloud.platform import Platform

log = logging.getLogger("fleetcloud.commands.pusher")

DEFAULT_TOPIC = "device_commands"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
TOPIC_ENV = "DEVICE_COMMAND_TOPIC"
TOPIC_PARTITIONS = 8

PRODUCER_OPTIONS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": False,  # tansu (the test broker) has no idempotent producer
    "request_timeout_ms": 10_000,
    "linger_ms": 1,
}


def command_topic_from_env() -> str:
    return os.environ.get(TOPIC_ENV) or DEFAULT_TOPIC


class PusherService:
    """Pushes ``CommandMessage``s to devices through Kafka or the embedded bus."""

    def __init__(
        self,
        kafka_bootstrap_servers: str | None = None,
        command_topic: str | None = None,
        *,
        platform: Platform | None = None,
        bus: Bus | None = None,
        author_id: int | None = None,
    ) -> None:
        self.command_topic = command_topic or command_topic_from_env()
        self.bus = bus if bus is not None else (platform.bus if platform is not None else None)
        servers = kafka_bootstrap_servers
        if servers is None and self.bus is None:
            servers = os.environ.get(BOOTSTRAP_ENV)
        self.kafka_bootstrap_servers = servers.removeprefix("kafka://") if servers else None
        self.author_id = author_id
        self._producer: Any = None
        self._lock: asyncio.Lock | None = None

    @property
    def mode(self) -> str:
        return "embedded" if self.bus is not None else "kafka"

    # ------------------------------------------------------------ lifecycle

    async def initialize(self) -> bool:
        """Connect to Kafka (nothing to do on the embedded bus); False if it cannot."""
        if self.bus is not None or self._producer is not None:
            return True
        if not self.kafka_bootstrap_servers:
            log.error("no Kafka configured: set KAFKA_BOOTSTRAP_SERVERS or pass platform=")
            return False
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka_bootstrap_servers, **PRODUCER_OPTIONS
        )
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            log.error("cannot connect to Kafka at %s: %r", self.kafka_bootstrap_servers, exc)
            await producer.stop()
            return False
        self._producer = producer
        await self._ensure_topic()
        return True

    async def _ensure_topic(self) -> None:
        """Create the command topic if the broker does not have it (best effort: a
        broker that creates topics itself, or refuses, is fine too)."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import KafkaError

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.kafka_bootstrap_servers, request_timeout_ms=10_000
        )
        try:
            await admin.start()
            if self.command_topic not in set(await admin.list_topics()):
                await admin.create_topics([NewTopic(self.command_topic, TOPIC_PARTITIONS, 1)])
        except KafkaError as exc:
            log.warning("could not check topic %s: %r", self.command_topic, exc)
        finally:
            await admin.close()

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            from aiokafka.errors import KafkaError

            try:
                await producer.stop()
            except KafkaError as exc:
                log.warning("could not close the Kafka producer cleanly: %r", exc)

    async def __aenter__(self) -> PusherService:
        if not await self.initialize():
            raise FleetError(f"cannot connect to Kafka at {self.kafka_bootstrap_servers}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ pushing

    async def push_command(self, command: CommandMessage) -> bool:
        """Push one command; True once it is durably on its way."""
        if self.bus is not None:
            try:
                await self.enqueue(command)
            except FleetError as exc:
                log.error("could not queue command %s: %s", command.request_id, exc.message)
                return False
            return True
        return await self._produce(command)

    async def enqueue(self, command: CommandMessage) -> StoredCommand:
        """Embedded bus only: record ``command`` and put it on the bus; returns it as
        stored (``FAILED`` "unknown device" for a device fleetcloud does not know)."""
        if self.bus is None:
            raise FleetError("enqueue needs the embedded bus (PusherService(platform=…))")
        [stored] = await self.bus.store.write(
            lifecycle.record([command], author_id=self.author_id, emit_topic=self.command_topic)
        )
        return stored

    async def _produce(self, command: CommandMessage) -> bool:
        if self._producer is None and not await self._start_lazily():
            return False
        from aiokafka.errors import KafkaError

        value = orjson.dumps(command.to_json())
        try:
            await self._producer.send_and_wait(
                self.command_topic, value, key=command.device_id.encode()
            )
        except KafkaError as exc:
            log.error("could not push command %s: %r", command.request_id, exc)
            return False
        return True

    async def _start_lazily(self) -> bool:
        """``create_pusher_service_sync`` hands out a service before any event loop
        runs; it connects on first use, in the loop that uses it."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return self._producer is not None or await self.initialize()

    async def create_and_push_command(
        self,
        device_id: str,
        command_type: str,
        payload: dict[str, Any] | None,
        protocol: str,
        parser_script_ref: str,
        metadata: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        expires_at: datetime | None = None,
    ) -> bool:
        """Build a ``CommandMessage`` from the arguments and push it."""
        fields: dict[str, Any] = {
            "device_id": device_id,
            "command_type": command_type,
            "payload": payload or {},
            "protocol": protocol,
            "parser_script_ref": parser_script_ref,
            "metadata": metadata or {},
            "expires_at": expires_at,
        }
        if request_id is not None:
            fields["request_id"] = request_id
        return await self.push_command(CommandMessage(**fields))

    async def push_command_dict(self, command: dict[str, Any]) -> bool:
        """Validate a command given as a dict and push it."""
        return await self.push_command(CommandMessage.from_dict(command))


async def create_pusher_service(
    kafka_bootstrap_servers: str | None = None,
    command_topic: str | None = None,
    **options: Any,
) -> PusherService | None:
    """A connected ``PusherService``, or None if it cannot be initialised (logged)."""
    service = PusherService(kafka_bootstrap_servers, command_topic, **options)
    try:
        ready = await service.initialize()
    except FleetError as exc:
        log.error("cannot initialise the pusher service: %s", exc.message)
        ready = False
    if not ready:
        await service.close()
        return None
    return service


def create_pusher_service_sync(
    kafka_bootstrap_servers: str | None = None,
    command_topic: str | None = None,
    **options: Any,
) -> PusherService | None:
    """A ``PusherService`` for code without a running event loop. Kafka is checked once
    (None if it cannot be reached); the service connects again in the loop that first
    uses it."""
    service = PusherService(kafka_bootstrap_servers, command_topic, **options)
    if service.bus is not None:
        return service

    async def probe() -> bool:
        ok = await service.initialize()
        await service.close()
        return ok

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return service if asyncio.run(probe()) else None
    return service  # inside a running loop: connect on first use
