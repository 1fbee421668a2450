"""The dispatcher: channel events in, app invocations out, at least once.

It consumes the bus topic ``channel_events`` as the durable consumer group
``apps-dispatcher`` and turns each event into deliveries for the installations it
concerns:

- ``MessageCreate`` on a channel in an installation's ``dv_proc_subscriptions`` (on the
  agent the app is installed on) → ``on_message_create``;
- ``AggregateUpdate`` of such a channel → ``on_aggregate_update`` — when it was a PATCH
  or PUT of the aggregate (the event's ``source`` is ``update``): a publish changes the
  aggregate too, and that change is the message's, not a separate event;
- events the installation's own app agent caused are skipped (its own echo): a message
  or an aggregate change whose ``author_id`` is the app agent.

Both come from the event itself, so they hold on any bus and with any number of
dispatchers. Events written before aggregate changes named their source and author are
told apart by their order instead (``Publishes``).

Most channel events concern no app: the subscription leaves out, undecoded, the records
of agents with no installation (a key filter by the current routes). If the routes
changed while a batch was on its way, what was left out is checked again against the new
ones, so an agent's events are never lost to a stale filter.

Deliveries are written to ``app_deliveries`` (the bus offset is committed only after
that), each with the event's stable id: the bus event id, which is the message id for a
message. The scheduler, the install path (``on_deployment``), manual invokes and the
ingestion endpoint add deliveries to the same table. The dispatcher runs them:

- one at a time per installation, in order; concurrency per app version and in all is
  bounded by the worker pool;
- at most ``max_pending`` in hand: past that it stops reading the bus (backpressure; an
  event is never dropped), and commits only what is safely stored;
- a failed attempt is retried after ``backoff_seconds`` (doubling, capped), up to
  ``retries`` times, then kept as a dead letter; every attempt is in the invocation log
  and its summary on ``dv-proc-inv-<app_id>``.

Several dispatchers (``fleetcloud serve --role dispatcher`` on Kafka) form one consumer
group: each event is routed by the one holding its partition. Before routing a batch a
dispatcher checks that its routes are current (``repo.routing_version``), since news of
an installation reaches only one of them. Claims (``owner``, ``lease_ms``) let them share
the table: a delivery whose dispatcher died is taken over once its lease lapses.

``run_until_idle`` does all there is to do and returns, for deterministic tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fleetcloud.apps import repo
from fleetcloud.apps.model import Delivery, Status
from fleetcloud.apps.pool import WorkerPool
from fleetcloud.apps.repo import INSTALLATION_EVENTS, Route, new_delivery
from fleetcloud.apps.runtime import Runtime
from fleetcloud.apps.settings import AppsSettings
from fleetcloud.bus.base import Subscription
from fleetcloud.core.ids import new_id
from fleetcloud.core.types import CHANNEL_EVENTS, Event
from fleetcloud.platform import Platform
from fleetcloud.sdk.data import TAG_CHANNEL, UI_STATE_CHANNEL
from fleetcloud.store.agents import now_ms
from fleetcloud.store.base import Store

log = logging.getLogger("fleetcloud.apps.dispatcher")

GROUP = "apps-dispatcher"
TOPICS = (CHANNEL_EVENTS, INSTALLATION_EVENTS)
READ_TIMEOUT = 1.0
IDLE_PAUSE = 0.5  # seconds between reads while no app is installed anywhere
COMMIT_SECONDS = 1.0

# ---------------------------------------------------------------- waking a dispatcher

_wakers: dict[int, asyncio.Event] = {}


def waker(store: Store) -> asyncio.Event:
    """Set when deliveries were added in this process (an install, an invoke, a webhook)."""
    key = id(store)
    event = _wakers.get(key)
    if event is None:
        event = _wakers[key] = asyncio.Event()
        weakref.finalize(store, _wakers.pop, key, None)
    return event


def wake(store: Store) -> None:
    waker(store).set()


# ---------------------------------------------------------------- routing (pure)


class Routing:
    """Which installations an event concerns."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.by_id: dict[int, Route] = {}
        self.by_agent: dict[int, list[Route]] = {}
        for route in routes:
            self.by_id[route.installation.id] = route
            self.by_agent.setdefault(route.installation.agent_id, []).append(route)
        self.keys = frozenset(str(agent_id) for agent_id in self.by_agent)

    def concerns(self, topic: str, key: str) -> bool:
        """Whether events of this bus key can concern an installation (the subscription's
        filter: another agent's channel events are left undecoded)."""
        return topic != CHANNEL_EVENTS or key in self.keys

    def deliveries(self, events: Sequence[Event], publishes: Publishes) -> list[Delivery]:
        found: list[Delivery] = []
        for event in events:
            if event.topic != CHANNEL_EVENTS:
                continue
            kind = event.value.get("t")
            if kind == "MessageCreate":
                publishes.saw_message(event.value["d"])
                found.extend(self._messages(event.value))
            elif kind == "AggregateUpdate" and _by_update(event.value["d"], publishes):
                found.extend(self._aggregates(event.value))
        return found

    def _subscribed(self, agent_id: int, channel: str) -> list[Route]:
        return [
            r for r in self.by_agent.get(agent_id, ()) if channel in r.installation.subscriptions
        ]

    def _messages(self, value: dict[str, Any]) -> Iterable[Delivery]:
        message = value["d"]
        agent_id, channel = _channel_key(message)
        for route in self._subscribed(agent_id, channel):
            if str(message.get("author_id")) == str(route.installation.app_agent_id):
                continue  # the app's own write
            data = {
                "message": message,
                "channel_name": channel,
                "owner_id": str(agent_id),
                "author_id": message.get("author_id"),
                "organisation_id": str(route.installation.organisation_id),
            }
            yield new_delivery("on_message_create", str(value["id"]), data, route.installation.id)

    def _aggregates(self, value: dict[str, Any]) -> Iterable[Delivery]:
        update = value["d"]
        agent_id, channel = _channel_key(update)
        author = update.get("author_id")
        for route in self._subscribed(agent_id, channel):
            if author is not None and str(author) == str(route.installation.app_agent_id):
                continue  # the app's own write
            if _own_echo(route, channel, update.get("diff")):
                continue
            data = {**update, "organisation_id": str(route.installation.organisation_id)}
            yield new_delivery("on_aggregate_update", str(value["id"]), data, route.installation.id)


def _by_update(update: dict[str, Any], publishes: Publishes) -> bool:
    """Whether an aggregate change was a PATCH or PUT (not a publish's)."""
    source = update.get("source")
    if source is None:  # an event from before ``source`` existed: go by the order
        return not publishes.explains(update)
    publishes.settle(update)
    return bool(source == "update")


class Publishes:
    """Tells an aggregate change a publish made from one made by PATCH or PUT, for
    events that do not say (written before ``source`` was added to them).

    A publish's transaction emits its messages, then one ``AggregateUpdate`` per channel
    it touched; events of one agent keep their order on the bus. So an aggregate change
    is a publish's when a message on that channel came since the last change of it.
    """

    def __init__(self) -> None:
        self._waiting: set[tuple[int, str]] = set()

    def saw_message(self, message: dict[str, Any]) -> None:
        self._waiting.add(_channel_key(message))

    def explains(self, update: dict[str, Any]) -> bool:
        key = _channel_key(update)
        if key in self._waiting:
            self._waiting.discard(key)
            return True
        return False

    def settle(self, update: dict[str, Any]) -> None:
        """An aggregate change that says its source: nothing is left to explain."""
        self._waiting.discard(_channel_key(update))


def _channel_key(data: dict[str, Any]) -> tuple[int, str]:
    channel = data["channel"]
    return int(channel["agent_id"]), str(channel["name"])


def _own_echo(route: Route, channel: str, diff: Any) -> bool:
    """An aggregate change that only touches the app's own tags or UI."""
    key = route.installation.app_key
    if channel == UI_STATE_CHANNEL and isinstance(diff, dict) and set(diff) == {"state"}:
        state = diff["state"]
        diff = (
            state.get("children")
            if isinstance(state, dict) and set(state) == {"children"}
            else None
        )
    return (
        channel in (TAG_CHANNEL, UI_STATE_CHANNEL) and isinstance(diff, dict) and set(diff) == {key}
    )


# ---------------------------------------------------------------- the dispatcher


@dataclass(frozen=True)
class _Open:
    tasks: asyncio.TaskGroup
    subscription: Subscription


@dataclass
class Counters:
    events: int = 0
    skipped: int = 0  # channel events of agents with no installation, left undecoded
    routed: int = 0
    attempts: int = 0
    retried: int = 0
    dead: int = 0
    waits: int = 0  # times reading stopped because max_pending deliveries were in hand
    peak: int = 0  # the most deliveries in hand at once (max_pending + one bus batch at most)


class Dispatcher:
    def __init__(
        self,
        platform: Platform,
        *,
        api_url: str,
        settings: AppsSettings | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        self.platform = platform
        self.store = platform.store
        self.settings = settings or AppsSettings()
        self.pool = pool or WorkerPool(self.settings)
        self.runtime = Runtime(self.store, self.pool, self.settings, api_url)
        self.owner = f"dispatcher-{new_id()}"
        self.routing = Routing(())
        self.publishes = Publishes()
        self.counters = Counters()
        self._queues: dict[int, deque[Delivery]] = {}
        self._held: set[int] = set()
        self._changed = asyncio.Event()  # a delivery finished
        self._subscription: Subscription | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._committed = 0.0
        self._unstored: tuple[list[Event], list[Delivery]] | None = None
        self._version: tuple[int, ...] = ()

    # ------------------------------------------------------------ lifecycle

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[Dispatcher]:
        """Subscribed, with workers, but no loops: drive it with ``run_until_idle``."""
        async with self.pool.running():
            subscription = self._subscription = await self.platform.bus.subscribe(TOPICS, GROUP)
            try:
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    try:
                        await self.reload()
                        yield self
                    finally:
                        for task in list(self._running):
                            task.cancel()
            finally:
                await self._release()
                await subscription.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Dispatcher]:
        """Opened, with the loops that read the bus, claim due deliveries and renew claims."""
        async with self.opened():
            for name, loop in (
                ("apps-dispatcher-read", self._read_loop()),
                ("apps-dispatcher-scan", self._scan_loop()),
                ("apps-dispatcher-renew", self._renew_loop()),
            ):
                self._spawn(loop, name)
            yield self

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = self._opened().tasks.create_task(coroutine, name=name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _opened(self) -> _Open:
        if self._tasks is None or self._subscription is None:
            raise RuntimeError("the dispatcher is not open: use `async with dispatcher.opened()`")
        return _Open(self._tasks, self._subscription)

    async def _release(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.write(repo.release(self.owner))

    async def reload(self) -> None:
        self._version = await self.store.read(repo.routing_version())
        self.routing = Routing(await self.store.read(repo.load_routes()))
        self.runtime.clear_scopes()

    async def _refresh(self) -> bool:
        """Reload the routes if installations changed since they were read (an
        ``app_installations`` event says so too, but the version is what counts)."""
        if await self.store.read(repo.routing_version()) != self._version:
            await self.reload()
            return True
        return False

    @property
    def pending(self) -> int:
        """Deliveries in hand: queued here or running."""
        return len(self._held)

    # ------------------------------------------------------------ loops

    async def _read_loop(self) -> None:
        while True:
            while self.pending >= self.settings.max_pending:
                self.counters.waits += 1
                self._changed.clear()
                await self._changed.wait()
            try:
                await self._read(READ_TIMEOUT)
            except Exception:
                log.exception("apps dispatcher: routing a batch failed; trying again")
                await asyncio.sleep(1.0)
            if not self.routing.by_id:
                # No app is installed anywhere, so nothing on the bus concerns one: read
                # (and skip) in gulps, a few fetches a second instead of hundreds. An app
                # installed meanwhile is routed from the next read on.
                await self._opened().subscription.rest(IDLE_PAUSE)

    async def _scan_loop(self) -> None:
        signal = waker(self.store)
        while True:
            signal.clear()
            try:
                await self._scan()
            except Exception:
                log.exception("apps dispatcher: claiming due deliveries failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), self.settings.poll_seconds)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            with contextlib.suppress(Exception):
                await self.store.write(repo.renew(self.owner, list(self._held), self._lease()))

    def _lease(self) -> int:
        return now_ms() + int(self.settings.lease_seconds * 1000)

    # ------------------------------------------------------------ steps

    async def _read(self, timeout: float) -> int:
        """Route one batch of bus events into stored deliveries; returns how many events
        it consumed.

        The subscription leaves out the events of agents with no installation (by the
        routes as they were before the batch); if the routes changed meanwhile, the left
        out events the new ones concern are taken back. A batch whose deliveries could
        not be stored is tried again (the same deliveries) before anything newer is read."""
        skipped = 0
        if self._unstored is None:
            subscription = self._opened().subscription
            batch = await subscription.next_batch(timeout, keep=self.routing.concerns)
            skipped = subscription.skipped
            if (batch or skipped) and await self._refresh() and skipped:
                batch += subscription.passed_over(self.routing.concerns)
            self.counters.skipped += skipped
            if not batch:
                if skipped:
                    await self._commit(force=False)
                return skipped
            self._unstored = (batch, self.routing.deliveries(batch, self.publishes))
        batch, deliveries = self._unstored
        if deliveries:
            added = await self.store.write(
                repo.enqueue(deliveries, owner=self.owner, lease_ms=self._lease())
            )
            for delivery in added:
                self.submit(delivery)
        self._unstored = None
        await self._commit(force=bool(deliveries))
        self.counters.events += len(batch)
        self.counters.routed += len(deliveries)
        return len(batch) + skipped

    async def _commit(self, *, force: bool) -> None:
        """Save the bus position: at once after deliveries were stored, else at most every
        ``COMMIT_SECONDS`` — a batch that concerned no app costs nothing to read again."""
        now = time.monotonic()
        if force or now - self._committed >= COMMIT_SECONDS:
            await self._opened().subscription.commit()
            self._committed = now

    async def _scan(self) -> int:
        """Claim deliveries that are due (new from elsewhere, or retries) and run them."""
        room = self.settings.max_pending - self.pending
        if room <= 0:
            return 0
        await self._refresh()  # a config changed since: run with the new one
        claimed = await self.store.write(repo.claim_due(self.owner, now_ms(), self._lease(), room))
        for delivery in claimed:
            self.submit(delivery)
        return len(claimed)

    def submit(self, delivery: Delivery) -> None:
        if delivery.id in self._held:
            return
        self._held.add(delivery.id)
        self.counters.peak = max(self.counters.peak, len(self._held))
        queue = self._queues.get(delivery.installation_id)
        if queue is not None:
            queue.append(delivery)
            return
        queue = self._queues[delivery.installation_id] = deque([delivery])
        self._spawn(self._drain(delivery.installation_id, queue), "apps-installation")

    async def _drain(self, installation_id: int, queue: deque[Delivery]) -> None:
        try:
            while queue:
                delivery = queue[0]
                try:
                    await self._execute(delivery)
                except Exception:
                    log.exception("apps dispatcher: delivery %s failed to run", delivery.id)
                queue.popleft()
                self._held.discard(delivery.id)
                self._changed.set()
        finally:
            if self._queues.get(installation_id) is queue:
                del self._queues[installation_id]

    async def _execute(self, delivery: Delivery) -> None:
        route = await self._route(delivery.installation_id)
        if route is None:
            await self.store.write(repo.drop_delivery(delivery.id))
            return
        outcome = await self.runtime.attempt(route, delivery)
        await self.store.write(repo.record(outcome))
        self.counters.attempts += 1
        self.counters.retried += outcome.retry_at_ms is not None
        self.counters.dead += outcome.dead
        if outcome.invocation.status is Status.FAILED:
            log.warning(
                "app %s (installation %s) failed: %s",
                route.installation.app_key,
                route.installation.id,
                outcome.invocation.error,
            )

    async def _route(self, installation_id: int) -> Route | None:
        route = self.routing.by_id.get(installation_id)
        if route is None:  # installed after our last reload: look it up
            found = await self.store.read(repo.load_routes([installation_id]))
            route = found[0] if found else None
        return route

    async def _drained(self) -> None:
        while self._held:
            self._changed.clear()
            await self._changed.wait()

    async def run_until_idle(self, timeout: float = 60.0) -> Counters:
        """Route every event there is, run every delivery (waiting for retries that come
        due), until nothing is left; returns the counters."""
        async with asyncio.timeout(timeout):
            while True:
                claimed = await self._scan()  # first: on_deployment goes before events
                read = await self._read(0)
                await self._drained()
                if read or claimed:
                    continue
                due = await self.store.read(repo.next_due_ms())
                if due is None:
                    await self._commit(force=True)
                    return self.counters
                await asyncio.sleep(max(due - now_ms(), 0) / 1000 + 0.005)


@contextlib.asynccontextmanager
async def running(
    platform: Platform, *, api_url: str, settings: AppsSettings | None = None
) -> AsyncIterator[Dispatcher]:
    """The dispatcher as a service of ``create_app(services=[…])``."""
    async with Dispatcher(platform, api_url=api_url, settings=settings).running() as dispatcher:
        yield dispatcher
