"""What every device connector shares: the command pipeline (tracker, parser runner and
library, device settings, ``Delivery``), its background tasks in one task group, and the
loop that keeps consuming ``device_commands`` from the bus, backing off while it fails.

A connector subclasses ``Connector``, starts its own transport in ``_start`` after
``_open``, consumes commands in ``_consume``, and stops its transport in ``__aexit__``
before calling ``super().__aexit__``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol, Self

from fleetcloud.bus.base import Mark, Subscription
from fleetcloud.commands.delivery import Delivery, SettingsCache
from fleetcloud.commands.runner import ParserRunner
from fleetcloud.commands.scripts import ParserLibrary
from fleetcloud.commands.tracker import CommandTracker
from fleetcloud.core.errors import FleetError
from fleetcloud.platform import Platform

log = logging.getLogger("fleetcloud.connectors")
CLOSE_TIMEOUT = 5.0  # seconds a stopping committer waits for its commit in flight


class PipelineOptions(Protocol):
    command_topic: str
    parser_workers: int
    parser_time_limit: float
    parsers_dir: str | None


class Connector:
    label = "connector"  # in errors and logs: "the MQTT connector is not running"

    def __init__(self, platform: Platform, options: PipelineOptions) -> None:
        self.platform = platform
        self.store = platform.store
        self._pipeline_options = options
        self._stack = contextlib.AsyncExitStack()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        await self._open()

    async def _open(self) -> None:
        """The command pipeline and the task group the connector's loops run in."""
        options = self._pipeline_options
        self.tracker = await self._stack.enter_async_context(CommandTracker(self.store))
        self.runner = await self._stack.enter_async_context(
            ParserRunner(workers=options.parser_workers, time_limit=options.parser_time_limit)
        )
        self.library = ParserLibrary(self.store, options.parsers_dir)
        self.settings = SettingsCache(self.store)
        self.delivery = Delivery(self.tracker, self.library, self.runner, self.settings)
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop_tasks()
        await self._stack.aclose()

    async def _stop_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._group is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._group.__aexit__(None, None, None)
            self._group = None

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._group is None:
            raise FleetError(f"the {self.label} is not running")
        task = self._group.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _commands_loop(self) -> None:
        """Consume ``device_commands`` for good: after a failure, again after a pause that
        doubles up to 10 s (and starts short again once consuming had been working)."""
        backoff = 0.5
        topic = self._pipeline_options.command_topic
        while True:
            started = time.monotonic()
            try:
                await self._consume()
            except FleetError as exc:
                log.warning("%s: consuming %s failed: %s", self.label, topic, exc.message)
            if time.monotonic() - started > 60:
                backoff = 0.5  # it had been working: retry soon
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _consume(self) -> None:
        raise NotImplementedError


class Committer:
    """Commits a consumer group's progress in the background: a mark of what was taken
    is committed once the writes that recording it started are done (every earlier
    mark's too), at most every ``interval`` seconds and one commit at a time. Consuming
    never waits for the database or for the broker's commit round trip.

    ``poll`` raises the failure of a write or of the last commit: the consumer then
    starts again from the last commit, and recording what it reads again is idempotent."""

    def __init__(self, subscription: Subscription, interval: float) -> None:
        self.subscription = subscription
        self.interval = interval
        self._waiting: deque[tuple[Mark, list[asyncio.Future[Any]]]] = deque()
        self._ready: Mark | None = None  # the newest mark whose writes are done
        self._commit: asyncio.Future[None] | None = None
        self._started = time.monotonic()

    def taken(self, writes: list[asyncio.Future[Any]]) -> None:
        """Everything the subscription returned so far is handled once ``writes`` are."""
        self._waiting.append((self.subscription.mark(), writes))

    def poll(self) -> None:
        """Start a commit if one is due."""
        if self._commit is not None and self._commit.done():
            commit, self._commit = self._commit, None
            commit.result()
        while self._waiting and all(write.done() for write in self._waiting[0][1]):
            mark, writes = self._waiting.popleft()
            for write in writes:
                write.result()
            self._ready = mark
        due = time.monotonic() - self._started >= self.interval
        if self._ready is not None and self._commit is None and due:
            self._started = time.monotonic()
            self._commit = asyncio.ensure_future(self.subscription.commit(self._ready))
            self._ready = None

    async def close(self) -> None:
        """Let a commit in flight finish (for a few seconds at most: what it would have
        recorded is only read again later)."""
        if self._commit is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, FleetError):
                await asyncio.wait_for(self._commit, CLOSE_TIMEOUT)
            self._commit = None
