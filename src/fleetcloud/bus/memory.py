"""The in-process bus. Its log is the store's outbox, so it survives a crash.

Live subscribers get each committed batch straight from the store's commit listener. A
group that falls behind (or has just started) reads the outbox table instead until it
has caught up. Rows every known group has committed are pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Sequence

from fleetcloud.bus.base import Bus, KeyFilter, Mark, Subscription
from fleetcloud.core.types import Event
from fleetcloud.store import outbox
from fleetcloud.store.base import Store

log = logging.getLogger("fleetcloud.bus.memory")

LIVE_LIMIT = 1_000  # batches held in memory per subscriber before it falls back to the table
READ_CHUNK = 200
PRUNE_EVERY = 200  # commits between outbox prunes


class MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, topics: Sequence[str], group: str | None, position: int):
        self.bus = bus
        self.topics = frozenset(topics)
        self.group = group
        self.position = position  # the last outbox row handed out
        self.committed = position
        self.catching_up = group is not None
        self.live: deque[tuple[int, Sequence[Event]]] = deque()
        self.wakeup = asyncio.Event()
        self.overflowed = False
        self.closed = False
        self.keep: KeyFilter | None = None
        self.left_out: list[Event] = []

    def offer(self, position: int, events: Sequence[Event]) -> None:
        # Kept even while catching up: a commit that lands after the table read's snapshot
        # would otherwise be missed when the read comes back empty. ``_take`` skips what
        # the table already gave.
        if len(self.live) >= LIVE_LIMIT:
            self.live.clear()
            if self.group is None:
                self.overflowed = True  # anonymous: nothing to catch up from
            else:
                self.catching_up = True
        else:
            self.live.append((position, events))
        self.wakeup.set()

    async def next_batch(
        self, timeout: float | None = None, *, keep: KeyFilter | None = None
    ) -> list[Event]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self.keep = keep
        self.left_out = []
        while not self.closed:
            batch = await self._take()
            self.skipped = len(self.left_out)
            if batch or self.left_out:
                return batch
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return []
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), remaining)
        return []

    async def _take(self) -> list[Event]:
        if self.catching_up:
            return await self._read_table()
        batch: list[Event] = []
        while self.live and len(batch) < 5_000:
            position, events = self.live.popleft()
            if position <= self.position:
                continue
            self.position = position
            self._sort(events, batch)
        return batch

    def _sort(self, events: Iterable[Event], into: list[Event]) -> None:
        """Add this subscriber's events to ``into``; those ``keep`` refuses to ``left_out``."""
        for event in events:
            if event.topic not in self.topics:
                continue
            if self.keep is None or self.keep(event.topic, event.key):
                into.append(event)
            else:
                self.left_out.append(event)

    def passed_over(self, keep: KeyFilter) -> list[Event]:
        found = [e for e in self.left_out if keep(e.topic, e.key)]
        self.left_out = []
        return found

    async def _read_table(self) -> list[Event]:
        while True:
            rows = await self.bus.store.read(outbox.read_after(self.position, READ_CHUNK))
            if not rows:
                self.catching_up = False  # later commits arrive live from here on
                return await self._take()
            self.position = rows[-1][0]
            mine: list[Event] = []
            for _, events in rows:
                self._sort(events, mine)
            if mine or self.left_out:  # a chunk of other topics' rows is skipped at once
                return mine

    def mark(self) -> Mark:
        return self.position

    async def commit(self, mark: Mark | None = None) -> None:
        position = self.position if mark is None else mark
        assert isinstance(position, int), "a mark of another subscription"
        if self.group is None or position <= self.committed:
            return
        await self.bus.store.write(outbox.set_offset(self.group, position))
        self.committed = max(self.committed, position)

    async def close(self) -> None:
        self.closed = True
        self.wakeup.set()
        self.bus.subscriptions.discard(self)


class MemoryBus(Bus):
    name = "memory"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.subscriptions: set[MemorySubscription] = set()
        self._commits = 0
        self._pruning: asyncio.Task[int] | None = None
        store.add_commit_listener(self._on_commit)

    def _on_commit(self, position: int, events: Sequence[Event]) -> None:
        for subscription in list(self.subscriptions):
            subscription.offer(position, events)
        self._commits += 1
        if self._commits % PRUNE_EVERY == 0 and (self._pruning is None or self._pruning.done()):
            self._pruning = asyncio.get_running_loop().create_task(self.prune(), name="bus-prune")

    async def subscribe(
        self, topics: Sequence[str], group: str | None = None, *, from_beginning: bool = False
    ) -> Subscription:
        position = await self.store.read(outbox.last_position())
        if group is not None:
            committed = await self.store.read(outbox.get_offset(group))
            if committed is not None:
                position = committed
            else:
                position = 0 if from_beginning else position
                await self.store.write(outbox.set_offset(group, position))
        subscription = MemorySubscription(self, topics, group, position)
        self.subscriptions.add(subscription)
        return subscription

    async def prune(self) -> int:
        """Delete outbox rows that every known group has committed."""
        offsets = await self.store.read(outbox.offsets())
        # With no group to resume, nothing reads the table: live subscribers were served
        # from memory when the rows committed.
        through = (
            min(offsets.values()) if offsets else await self.store.read(outbox.last_position())
        )
        try:
            return await self.store.write(outbox.delete_through(through))
        except Exception:
            log.exception("could not prune the outbox")
            return 0

    async def lag(self) -> dict[str, int]:
        last = await self.store.read(outbox.last_position())
        offsets = await self.store.read(outbox.offsets())
        return {group: max(last - position, 0) for group, position in offsets.items()}

    async def close(self) -> None:
        self.store.remove_commit_listener(self._on_commit)
        for subscription in list(self.subscriptions):
            await subscription.close()
        if self._pruning is not None:
            await self._pruning
