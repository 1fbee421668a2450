"""The scheduler: ``on_schedule`` deliveries when installations' schedules come due.

Each installation with a schedule other than ``disabled`` has a row in ``app_schedules``
holding its next fire time (``apps.schedules`` reads the expression). A tick queues a
delivery for each due row — event id ``schedule-<installation>-<fire time ms>``, so a
fire is queued once even if two schedulers race — and moves the row to the next fire
time after *now*: fire times missed while nothing was running are not made up one by
one, the schedule simply fires once and carries on.

The scheduler also prunes the invocation log, dead letters and expired invocation tokens
(``retention_days``). Time comes from ``clock`` (Unix ms), which tests replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from fleetcloud.apps import repo
from fleetcloud.apps.dispatcher import wake
from fleetcloud.apps.schedules import ScheduleError, parse_schedule
from fleetcloud.apps.settings import AppsSettings
from fleetcloud.platform import Platform

log = logging.getLogger("fleetcloud.apps.scheduler")

Clock = Callable[[], int]
TICK_SECONDS = 1.0
PRUNE_SECONDS = 3600.0


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def next_fire_ms(expression: str, after_ms: int) -> int | None:
    """The first fire time of ``expression`` after ``after_ms`` (None: never)."""
    schedule = parse_schedule(expression)
    found = schedule.next_after(datetime.fromtimestamp(after_ms / 1000, UTC))
    return None if found is None else int(found.timestamp() * 1000)


class Scheduler:
    def __init__(
        self,
        platform: Platform,
        *,
        settings: AppsSettings | None = None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self.platform = platform
        self.store = platform.store
        self.settings = settings or AppsSettings()
        self.clock = clock
        self.fired = 0
        self._pruned_at = 0.0

    async def tick(self) -> int:
        """Queue the deliveries of every schedule due now; returns how many fired."""
        now = self.clock()
        fired = 0
        for due in await self.store.read(repo.due_schedules(now)):
            try:
                following = next_fire_ms(due.expression, now)
            except ScheduleError as exc:  # stored before a parser change; stop it
                log.warning("installation %s: %s", due.installation_id, exc)
                following = None
            data = {
                "schedule_id": str(due.installation_id),
                "organisation_id": str(due.organisation_id),
                "agent_id": str(due.agent_id),
                "scheduled_ms": due.next_ms,
            }
            event_id = f"schedule-{due.installation_id}-{due.next_ms}"
            delivery = repo.new_delivery("on_schedule", event_id, data, due.installation_id)
            fresh = repo.fire_schedule(due.installation_id, due.next_ms, following, delivery)
            fired += bool(await self.store.write(fresh))
        if fired:
            wake(self.store)
        self.fired += fired
        return fired

    async def prune(self) -> int:
        cutoff = self.clock() - int(self.settings.retention_days * 86_400_000)
        return await self.store.write(repo.prune(cutoff))

    async def run_until_idle(self) -> int:
        """Fire everything due at the clock's current time; returns how many fired."""
        fired = 0
        while True:
            count = await self.tick()
            if not count:
                return fired
            fired += count

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
                if time.monotonic() - self._pruned_at > PRUNE_SECONDS:
                    self._pruned_at = time.monotonic()
                    await self.prune()
            except Exception:
                log.exception("apps scheduler: a tick failed; trying again")
            await asyncio.sleep(TICK_SECONDS)


@contextlib.asynccontextmanager
async def running(
    platform: Platform, *, settings: AppsSettings | None = None
) -> AsyncIterator[Scheduler]:
    """The scheduler as a service of ``create_app(services=[…])``."""
    scheduler = Scheduler(platform, settings=settings)
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(scheduler.run(), name="apps-scheduler")
        try:
            yield scheduler
        finally:
            task.cancel()
