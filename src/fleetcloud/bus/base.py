"""The ``Bus`` interface.

Producers never talk to a broker directly: every event is written to the store's outbox
(in the same transaction as the data it describes, or on its own through ``publish``),
and each backend delivers from there. Consumers subscribe either as a named **group**,
which resumes after its last ``commit`` (at-least-once), or anonymously (``group=None``),
which sees only what is published from then on — what the websocket gateway wants.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence

from fleetcloud.core.errors import ConfigError
from fleetcloud.core.types import Event
from fleetcloud.store.base import Store

KeyFilter = Callable[[str, str], bool]
"""``keep(topic, key)``: whether a subscriber wants the events of that key."""

Mark = object
"""A subscription's position (``Subscription.mark``); only its own ``commit`` reads it."""


class Subscription(ABC):
    """A consumer's view of some topics. Use as an async iterator of event batches."""

    skipped = 0  # how many events (or records holding them) the last ``keep`` left out

    @abstractmethod
    async def next_batch(
        self, timeout: float | None = None, *, keep: KeyFilter | None = None
    ) -> list[Event]:
        """Wait for events (at most ``timeout`` seconds) and return them; [] on timeout.

        With ``keep``, events whose key it refuses are left out before they are decoded
        (the cheap way to ignore most of a busy topic); [] is then also returned when all
        that arrived was left out. They still count as consumed for ``commit``, and
        ``passed_over`` gives back those of them a changed filter now accepts."""

    def passed_over(self, keep: KeyFilter) -> list[Event]:
        """The events the last ``next_batch`` left out that ``keep`` accepts, in order.

        For a subscriber whose filter changed while that batch was on its way (the apps
        dispatcher learning of a new installation): nothing it consumed is lost."""
        return []

    async def rest(self, seconds: float) -> None:
        """Read nothing for ``seconds``; a backend may stop fetching meanwhile. Nothing is
        lost: what arrives is read afterwards (for a subscriber that reads in gulps)."""
        await asyncio.sleep(seconds)

    @abstractmethod
    def mark(self) -> Mark:
        """Where this subscription is now: every event returned so far. A consumer that
        handles events in the background commits a mark once they are handled, and goes
        on reading meanwhile."""

    @abstractmethod
    async def commit(self, mark: Mark | None = None) -> None:
        """Record that every event up to ``mark`` (by default, every event returned so
        far) has been handled (groups only). A mark older than the last commit changes
        nothing."""

    @abstractmethod
    async def close(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Event]]:
        while True:
            batch = await self.next_batch()
            if batch:
                yield batch

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Bus(ABC):
    name: str

    def __init__(self, store: Store) -> None:
        self.store = store

    async def start(self) -> None:  # noqa: B027 - a hook; most backends need no start-up
        """Connect to the broker, if there is one."""

    async def close(self) -> None:  # noqa: B027 - a hook; most backends hold nothing
        """Stop delivering and disconnect."""

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish events that belong to no data write (durably, through the outbox)."""
        await self.store.append_events(events)

    @abstractmethod
    async def subscribe(
        self, topics: Sequence[str], group: str | None = None, *, from_beginning: bool = False
    ) -> Subscription:
        """Subscribe to ``topics``. A new group starts at the end of the log unless
        ``from_beginning``; an existing group resumes after its last commit."""

    @abstractmethod
    async def lag(self) -> dict[str, int]:
        """Per consumer group, how many outbox rows (or records) are not yet consumed."""

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def open_bus(url: str, store: Store) -> Bus:
    """``memory`` (the default) or ``kafka://HOST:PORT[,HOST:PORT…]``."""
    if url in ("", "memory", "memory://"):
        from fleetcloud.bus.memory import MemoryBus

        return MemoryBus(store)
    if url.startswith("kafka://"):
        from fleetcloud.bus.kafka import KafkaBus

        return KafkaBus(store, url.removeprefix("kafka://"))
    raise ConfigError(f"unsupported bus URL {url!r}: use 'memory' or kafka://HOST:PORT")
