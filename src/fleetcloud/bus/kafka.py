"""The Kafka bus: the store's outbox is relayed to Kafka, and consumers read from Kafka.

Producers never talk to Kafka. A **relay** task reads outbox rows in id order, produces
each event to topic ``event.topic`` with key ``event.key`` and the JSON of
``event.value``, waits for the broker's acknowledgements and only then deletes the rows it
relayed (exactly those rows). It wakes when the store commits events and polls every
second for rows other processes wrote. If Kafka is down it retries with backoff; rows stay
in the outbox until they are acknowledged, so nothing is lost, but a row may be produced
twice (after a failure between the acks and the delete): delivery is at-least-once, and
consumers deduplicate by event id where it matters.

With SQLite one process owns the database, so there is no lock (run one ``KafkaBus`` per
store), and the relay takes the rows this process commits straight from the commit
listener: no read and no JSON decoding of the row, only the delete once Kafka has them.
It still reads the table at start and after any failure or overflow (in id order, every
row), and every ``POLL_INTERVAL`` for rows other processes wrote (their ids first, then
the payloads of the rows the fast path does not hold), so no row is left behind. With
PostgreSQL several processes may run a relay; each pass reads the table and holds a
session advisory lock (``pg_try_advisory_lock``), so one relays while the others skip.

Subscribers are ``AIOKafkaConsumer`` instances. An anonymous one (``group=None``) has no
group id, starts at the end of every partition and sees only what is published after
``subscribe`` returns. A named group commits explicitly (``commit`` records what
``next_batch`` returned); a brand-new group starts at the end of the log unless
``from_beginning``, and that starting point is committed at once, so a group that
re-subscribes before its first ``commit`` misses nothing published after it first did.

Events for one key keep their order: the relay produces rows in id order and Kafka keeps
one key on one partition. Topics are created on demand (``partitions`` each).

**Record format.** An event is one record whose value is the JSON of ``event.value``,
except on the high-volume internal topics (``GROUPED_TOPICS``: channel events): there the
events one relay pass has for one key go into as few records as possible, each a JSON
array of event values in order (at most ``RECORD_BYTES`` of JSON per record). Producer and
consumer costs are per record, so a busy device's messages and aggregate updates cost one
record per pass rather than one each. Subscribers read both forms; the command topic, which
other producers (``PusherService``) write too, always has one command per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import ConsumerStoppedError, KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

from fleetcloud.bus.base import Bus, KeyFilter, Mark, Subscription
from fleetcloud.core.errors import BusError
from fleetcloud.core.types import CHANNEL_EVENTS, Event
from fleetcloud.store import outbox
from fleetcloud.store.base import Store
from fleetcloud.store.ops import Execute, Fetch, Work, placeholders

log = logging.getLogger("fleetcloud.bus.kafka")

RELAY_GROUP = "kafka-relay"  # the name lag() reports the relay backlog under
RELAY_LOCK = 7_301_002  # pg_try_advisory_lock key: one relaying process at a time
RELAY_CHUNK = 500  # outbox rows per relay pass
FRESH_LIMIT = 10_000  # rows held for the fast path at most (then the table takes over)
POLL_INTERVAL = 1.0  # seconds between relay passes when no local commit wakes it
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
FINAL_DRAIN_TIMEOUT = 5.0
RELAY_STOP_TIMEOUT = 10.0
DELETE_CHUNK = 500
MAX_RECORDS = 5_000  # events per next_batch at most
WAIT_SLICE_MS = 1_000  # next_batch(None) waits in slices this long
ALIGN_TIMEOUT = 2.0  # subscribe waits this long at most for a first fetch (see below)
ALIGN_STEP = 0.005

GROUPED_TOPICS = frozenset({CHANNEL_EVENTS})  # a key's events share records (module doc)
RECORD_BYTES = 256 * 1024  # JSON in one grouped record at most (below max_request_size)

TOPIC_ALREADY_EXISTS = 36  # the Kafka protocol's TOPIC_ALREADY_EXISTS error code

PRODUCER_OPTIONS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 5,
    "enable_idempotence": False,  # tansu (the test broker) has no idempotent producer
    "request_timeout_ms": 10_000,
}
CONSUMER_OPTIONS: dict[str, Any] = {
    "enable_auto_commit": False,
    "fetch_max_wait_ms": 10,
    "session_timeout_ms": 6_000,
    "heartbeat_interval_ms": 1_000,
    "rebalance_timeout_ms": 6_000,
    "max_poll_interval_ms": 300_000,
    "request_timeout_ms": 10_000,
}


def _awaiting(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits: its chain of awaited coroutines, outermost first."""
    where: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(where) < 50:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            where.append(type(awaited).__name__)
            break
        where.append(f"{frame.f_code.co_qualname} ({frame.f_code.co_filename}:{frame.f_lineno})")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return " → ".join(where)


def _bus_error(action: str, exc: BaseException) -> BusError:
    return BusError(f"kafka: could not {action}: {exc!r}")


def decode_record(record: Any) -> list[Event]:
    """The events a consumer record carries (see "Record format"); none (logged) if it is
    not ours."""
    return decode_value(record, record_key(record))


def record_key(record: Any) -> str:
    """A record's key as text ("" when it has none or it is not UTF-8)."""
    try:
        return record.key.decode() if record.key is not None else ""
    except UnicodeDecodeError:
        return ""


def decode_value(record: Any, key: str) -> list[Event]:
    try:
        value = orjson.loads(record.value)
    except (orjson.JSONDecodeError, TypeError):
        log.warning("skipping an undecodable record at %s[%d]@%d", *_where(record))
        return []
    if isinstance(value, dict):
        return [Event(record.topic, key, value)]
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return [Event(record.topic, key, item) for item in value]
    log.warning("skipping a record that holds no event objects at %s[%d]@%d", *_where(record))
    return []


def encode_records(events: Sequence[Event]) -> list[tuple[str, bytes, bytes]]:
    """``(topic, key, value)`` records for ``events``, grouped by key on
    ``GROUPED_TOPICS`` (each key's events in their order), one per event elsewhere.

    A key's group is encoded as one JSON array in one call; only a group larger than
    ``RECORD_BYTES`` is encoded event by event, to be split."""
    records: list[tuple[str, bytes, bytes]] = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for event in events:
        if event.topic in GROUPED_TOPICS:
            groups.setdefault((event.topic, event.key), []).append(event.value)
        else:
            records.append((event.topic, event.key.encode(), orjson.dumps(event.value)))
    for (topic, key), values in groups.items():
        encoded = key.encode()
        whole = orjson.dumps(values[0] if len(values) == 1 else values)
        if len(whole) <= RECORD_BYTES or len(values) == 1:
            records.append((topic, encoded, whole))
        else:
            parts = _joined([orjson.dumps(value) for value in values])
            records.extend((topic, encoded, part) for part in parts)
    return records


def _joined(values: list[bytes]) -> Iterator[bytes]:
    """``values`` as JSON arrays of at most ``RECORD_BYTES`` (a lone value as itself)."""
    if len(values) == 1:
        yield values[0]
        return
    chunk: list[bytes] = []
    size = 0
    for value in values:
        if chunk and size + len(value) > RECORD_BYTES:
            yield b"[" + b",".join(chunk) + b"]"
            chunk, size = [], 0
        chunk.append(value)
        size += len(value) + 1
    yield b"[" + b",".join(chunk) + b"]"


def _where(record: Any) -> tuple[str, int, int]:
    return str(record.topic), int(record.partition), int(record.offset)


# ---------------------------------------------------------------- outbox work


def delete_rows(ids: Sequence[int]) -> Work[int]:
    """Delete exactly these outbox rows. Not ``delete_through``: with PostgreSQL, a row
    with a lower id can commit after a higher one was read, and must survive."""
    count = 0
    for start in range(0, len(ids), DELETE_CHUNK):
        chunk = ids[start : start + DELETE_CHUNK]
        sql = f"DELETE FROM outbox WHERE id IN ({placeholders(len(chunk))})"  # noqa: S608
        deleted: int = yield Execute(sql, chunk)
        count += deleted
    return count


def row_ids_after(position: int, limit: int) -> Work[list[int]]:
    rows = yield Fetch("SELECT id FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (position, limit))
    return [int(row[0]) for row in rows]


def rows_by_id(ids: Sequence[int]) -> Work[list[tuple[int, list[Event]]]]:
    """These outbox rows (those that still exist), in id order."""
    marks = placeholders(len(ids))
    sql = f"SELECT id, payload FROM outbox WHERE id IN ({marks}) ORDER BY id"  # noqa: S608 - "?" placeholders only
    rows = yield Fetch(sql, ids)
    return [(int(row_id), outbox.decode(payload)) for row_id, payload in rows]


def backlog() -> Work[int]:
    rows = yield Fetch("SELECT count(*) FROM outbox")
    return int(rows[0][0] or 0)


# ---------------------------------------------------------------- subscriptions


class KafkaSubscription(Subscription):
    def __init__(self, bus: KafkaBus, consumer: Any, group: str | None) -> None:
        self.bus = bus
        self.consumer = consumer
        self.group = group
        self.returned: dict[Any, int] = {}  # partition -> offset after the last one returned
        self.committed: dict[Any, int] = {}  # partition -> offset committed by this consumer
        self.left_out: list[tuple[str, Any]] = []  # (key, record) the last batch's keep refused
        self.closed = False

    async def next_batch(
        self, timeout: float | None = None, *, keep: KeyFilter | None = None
    ) -> list[Event]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self.left_out = []
        while not self.closed:
            remaining = WAIT_SLICE_MS if deadline is None else (deadline - loop.time()) * 1000
            batch = await self._fetch(max(int(remaining), 0), keep)
            self.skipped = len(self.left_out)
            if batch or self.left_out or (deadline is not None and loop.time() >= deadline):
                return batch
        return []

    async def _fetch(self, timeout_ms: int, keep: KeyFilter | None) -> list[Event]:
        try:
            records = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=MAX_RECORDS)
        except ConsumerStoppedError:
            return []  # closed while waiting
        except KafkaError as exc:
            raise _bus_error("fetch", exc) from exc
        events: list[Event] = []
        for partition, batch in records.items():
            if not batch:
                continue
            self.returned[partition] = batch[-1].offset + 1
            for record in batch:
                key = record_key(record)
                if keep is None or keep(record.topic, key):
                    events.extend(decode_value(record, key))
                else:  # left undecoded unless passed_over wants it
                    self.left_out.append((key, record))
        return events

    async def rest(self, seconds: float) -> None:
        """Pause every assigned partition meanwhile: no fetch requests at all, where the
        consumer would otherwise keep fetching (and, on an idle topic, be answered empty
        every ``fetch_max_wait_ms``). Records fetched and not yet returned are dropped
        by the pause and fetched again after it, from the same position."""
        self.consumer.pause(*self.consumer.assignment())
        try:
            await asyncio.sleep(seconds)
        finally:
            if not self.closed:  # resume what is paused now (a rebalance may have moved it)
                self.consumer.resume(*self.consumer.paused())

    def passed_over(self, keep: KeyFilter) -> list[Event]:
        found: list[Event] = []
        for key, record in self.left_out:
            if keep(record.topic, key):
                found.extend(decode_value(record, key))
        self.left_out = []
        return found

    def mark(self) -> Mark:
        return dict(self.returned)

    async def commit(self, mark: Mark | None = None) -> None:
        positions = self.returned if mark is None else mark
        assert isinstance(positions, dict), "a mark of another subscription"
        if self.group is None:
            return
        # Partitions a rebalance took away are no longer ours to commit: their new owner
        # starts after the last commit, so it sees those events again (at-least-once).
        assigned = self.consumer.assignment()
        for gone in [p for p in self.returned if p not in assigned]:
            self.returned.pop(gone, None)
            self.committed.pop(gone, None)
        offsets = {
            partition: offset
            for partition, offset in positions.items()
            if partition in assigned and offset > self.committed.get(partition, -1)
        }
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # not recorded: the next commit includes them again
            raise _bus_error(f"commit for group {self.group!r}", exc) from exc
        for partition, offset in offsets.items():
            self.committed[partition] = max(self.committed.get(partition, -1), offset)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.bus.subscriptions.discard(self)
        if self.group is not None:
            _leave_even_at_generation_zero(self.consumer)
        try:
            await self.consumer.stop()
        except KafkaError as exc:
            log.warning("could not stop a consumer cleanly: %r", exc)


# ---------------------------------------------------------------- the bus


class KafkaBus(Bus):
    name = "kafka"

    def __init__(self, store: Store, bootstrap_servers: str, *, partitions: int = 8) -> None:
        super().__init__(store)
        self.bootstrap_servers = bootstrap_servers
        self.partitions = partitions
        self.subscriptions: set[KafkaSubscription] = set()
        self._producer: Any = None
        self._admin: Any = None
        self._relay: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._known_topics: set[str] = set()
        self._topics_lock = asyncio.Lock()
        self._draining = asyncio.Lock()  # one relay pass at a time in this process
        # The fast path (SQLite): rows committed here and not relayed yet, in commit order.
        self._fast = False
        self._fresh: dict[int, Sequence[Event]] = {}
        self._table_due = True  # the next pass reads the table (start, failure, overflow)
        self._table_at = 0.0  # loop time of the last complete table pass
        self._table_relayed: set[int] = set()  # rows the last table pass relayed

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect the producer and start the relay. Raises ``BusError`` if Kafka cannot
        be reached now; later outages are retried by the relay."""
        if self._relay is not None:
            return
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, **PRODUCER_OPTIONS)
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise _bus_error(f"connect to {self.bootstrap_servers}", exc) from exc
        self._producer = producer
        self._fast = self.store.dialect == "sqlite"
        self._fresh.clear()
        self._table_due = True  # relay what is already waiting
        self.store.add_commit_listener(self._on_commit)
        self._wakeup.set()
        self._relay = asyncio.get_running_loop().create_task(self._relay_loop(), name="kafka-relay")

    async def close(self) -> None:
        self.store.remove_commit_listener(self._on_commit)
        await self._stop_relay()
        for subscription in list(self.subscriptions):
            await subscription.close()
        await self._stop_clients()

    async def _stop_relay(self) -> None:
        """Cancel the relay and wait ``RELAY_STOP_TIMEOUT`` at most for it to end (a
        client call that does not give way must not hold the close forever), then relay
        what is left, within ``FINAL_DRAIN_TIMEOUT``."""
        relay, self._relay = self._relay, None
        if relay is None:
            return
        relay.cancel()
        stopped, _ = await asyncio.wait({relay}, timeout=RELAY_STOP_TIMEOUT)
        if not stopped:
            log.warning(
                "kafka relay: not stopped %g s after it was cancelled; closing without "
                "waiting for it. It was in: %s",
                RELAY_STOP_TIMEOUT,
                _awaiting(relay),
            )
        try:
            await asyncio.wait_for(self.drain(), FINAL_DRAIN_TIMEOUT)
        except Exception as exc:  # the rows stay in the outbox for the next start
            log.warning("kafka relay: final drain failed: %r", exc)

    async def _stop_clients(self) -> None:
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        try:
            if producer is not None:
                await producer.stop()
            if admin is not None:
                await admin.close()
        except KafkaError as exc:
            log.warning("could not disconnect from kafka cleanly: %r", exc)

    # ------------------------------------------------------------ the relay

    def _on_commit(self, position: int, events: Sequence[Event]) -> None:
        if self._fast and position and position not in self._table_relayed:
            if len(self._fresh) < FRESH_LIMIT:
                self._fresh[position] = events
            else:  # far behind: relay from the table, in order, until it has caught up
                self._fresh.clear()
                self._table_due = True
        self._wakeup.set()

    async def _relay_loop(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            self._wakeup.clear()
            try:
                await self._relay_due()
            except Exception as exc:
                log.warning("kafka relay failed (retrying in %.1fs): %r", backoff, exc)
                self._fresh.clear()  # the table has every unrelayed row
                self._table_due = True
                self._known_topics.clear()  # the broker may have lost them: check again
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), POLL_INTERVAL)

    async def _relay_due(self) -> None:
        """One wake-up's work: the fast path's rows, or the table when it is due."""
        loop = asyncio.get_running_loop()
        if self._table_due or not self._fast:
            await self.drain()
            return
        if loop.time() - self._table_at >= POLL_INTERVAL:
            await self._poll()
        async with self._draining:
            while self._fresh and loop.time() - self._table_at < POLL_INTERVAL:
                rows = list(itertools.islice(self._fresh.items(), RELAY_CHUNK))
                await self._relay_rows(rows)
                for row_id, _ in rows:
                    self._fresh.pop(row_id, None)

    async def _poll(self) -> None:
        """Relay the table's rows in id order: the payload of those the fast path does
        not hold (other processes' commits) is read, the others are taken from the fast
        path. A row whose commit callback arrives while this runs is relayed here, in its
        place, and not again by the fast path — never ahead of an older row, never twice."""
        async with self._draining:
            self._table_relayed = set()
            after = 0
            while True:
                ids = await self.store.read(row_ids_after(after, RELAY_CHUNK))
                unheld = [row_id for row_id in ids if row_id not in self._fresh]
                read = dict(await self.store.read(rows_by_id(unheld))) if unheld else {}
                rows = [
                    (row_id, read[row_id] if row_id in read else self._fresh[row_id])
                    for row_id in ids
                    if row_id in read or row_id in self._fresh
                ]
                if rows:
                    await self._relay_rows(rows)
                    for row_id, _ in rows:
                        self._fresh.pop(row_id, None)
                        self._table_relayed.add(row_id)
                if len(ids) < RELAY_CHUNK:
                    break
                after = ids[-1]
            self._table_at = asyncio.get_running_loop().time()

    async def drain(self) -> int:
        """Relay outbox rows from the table until none are left (or another process holds
        the relay lock); returns how many rows this call relayed."""
        relayed = 0
        async with self._draining:
            self._table_relayed = set()
            while True:
                async with self._relay_lock() as held:
                    if not held:
                        return relayed
                    count = await self._relay_pass()
                relayed += count
                if count < RELAY_CHUNK:
                    self._table_due = False
                    self._table_at = asyncio.get_running_loop().time()
                    return relayed

    async def _relay_pass(self) -> int:
        rows = await self.store.read(outbox.read_after(0, RELAY_CHUNK))
        if not rows:
            return 0
        await self._relay_rows(rows)
        for row_id, _ in rows:  # relayed: the fast path must not send them again
            self._fresh.pop(row_id, None)
            self._table_relayed.add(row_id)
        return len(rows)

    async def _relay_rows(self, rows: Sequence[tuple[int, Sequence[Event]]]) -> None:
        """Produce the rows' events, wait for Kafka's acks, then delete exactly those rows."""
        await self.ensure_topics({event.topic for _, events in rows for event in events})
        await self._produce([event for _, events in rows for event in events])
        await self.store.write(delete_rows([row_id for row_id, _ in rows]))

    async def _produce(self, events: Sequence[Event]) -> None:
        """Send every event and wait for all the acknowledgements; raise ``BusError`` if
        any send failed (after the others have settled)."""
        if self._producer is None:
            raise BusError("kafka: the bus is not started")
        futures: list[asyncio.Future[Any]] = []
        error: BaseException | None = None
        try:
            for topic, key, value in encode_records(events):
                futures.append(await self._producer.send(topic, value, key=key))
        except KafkaError as exc:
            error = exc
        results = await asyncio.gather(*futures, return_exceptions=True)
        error = error or next((r for r in results if isinstance(r, BaseException)), None)
        if error is not None:
            raise _bus_error("produce", error) from error

    @contextlib.asynccontextmanager
    async def _relay_lock(self) -> AsyncIterator[bool]:
        """Whether this process may relay now: always with SQLite (one process owns the
        file); with PostgreSQL, while it holds the relay advisory lock."""
        from fleetcloud.store.postgres import PostgresStore

        if not isinstance(self.store, PostgresStore) or self.store._pool is None:
            yield True
            return
        async with self.store._pool.acquire() as conn:
            held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK))
            try:
                yield held
            finally:
                if held:
                    await conn.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK)

    # ------------------------------------------------------------ topics

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the topics that do not exist yet (``self.partitions`` partitions each)."""
        missing = set(topics) - self._known_topics
        if not missing:
            return
        async with self._topics_lock:
            try:
                await self._create_topics(missing - self._known_topics)
            except KafkaError as exc:
                raise _bus_error(f"create topics {sorted(missing)}", exc) from exc

    async def _create_topics(self, topics: set[str]) -> None:
        if not topics:
            return
        admin = await self._admin_client()
        existing = set(await admin.list_topics())
        wanted = sorted(topics - existing)
        if wanted:
            new = [NewTopic(topic, self.partitions, 1) for topic in wanted]
            response = await admin.create_topics(new)
            _check_created(response)
        self._known_topics.update(topics)

    async def _admin_client(self) -> Any:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers, request_timeout_ms=10_000
            )
            try:
                await admin.start()
            except KafkaError:
                await admin.close()
                raise
            self._admin = admin
        return self._admin

    # ------------------------------------------------------------ consuming

    async def subscribe(
        self, topics: Sequence[str], group: str | None = None, *, from_beginning: bool = False
    ) -> Subscription:
        await self.ensure_topics(topics)
        from_start = group is not None and from_beginning
        reset = "earliest" if from_start else "latest"
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self.bootstrap_servers,
            group_id=group,
            auto_offset_reset=reset,
            **CONSUMER_OPTIONS,
        )
        try:
            await consumer.start()
            await _pin_positions(consumer, group, from_start)
        except KafkaError as exc:
            await consumer.stop()
            raise _bus_error(f"subscribe to {list(topics)}", exc) from exc
        except BaseException:
            await consumer.stop()
            raise
        subscription = KafkaSubscription(self, consumer, group)
        self.subscriptions.add(subscription)
        return subscription

    async def lag(self) -> dict[str, int]:
        """The relay backlog: outbox rows not yet acknowledged by Kafka. (Consumer group
        lag lives in Kafka; read it with Kafka's own tools.)"""
        return {RELAY_GROUP: await self.store.read(backlog())}


async def _pin_positions(consumer: Any, group: str | None, from_beginning: bool) -> None:
    """Resolve every assigned partition's position now, so that what is published after
    ``subscribe`` returns is seen; a new group also commits that starting point."""
    fresh: list[Any] = []  # partitions without a committed offset (all, if anonymous)
    for partition in consumer.assignment():
        await consumer.position(partition)
        if group is None or await consumer.committed(partition) is None:
            fresh.append(partition)
    if not from_beginning:
        await _align_with_highwater(consumer, fresh)
    if group is not None and fresh:
        starting = {partition: await consumer.position(partition) for partition in fresh}
        await consumer.commit(starting)


async def _align_with_highwater(consumer: Any, partitions: list[Any]) -> None:
    """Move partitions that start "at the end" to the high watermark of their first fetch.

    Kafka answers ListOffsets(latest) with the log end, and this changes nothing. tansu
    answers with the last record batch's base offset + 1, which would replay the rest of
    that batch to a subscriber that should see only new events; its fetch responses carry
    the right high watermark. Waits for one fetch round trip at most ``ALIGN_TIMEOUT``;
    anything it skips was published before ``subscribe`` returned."""
    for _ in range(int(ALIGN_TIMEOUT / ALIGN_STEP)):
        if all(consumer.highwater(partition) is not None for partition in partitions):
            break
        await asyncio.sleep(ALIGN_STEP)
    for partition in partitions:
        highwater = consumer.highwater(partition)
        if highwater is not None and highwater > await consumer.position(partition):
            consumer.seek(partition, highwater)


def _leave_even_at_generation_zero(consumer: Any) -> None:
    """Make ``consumer.stop()`` leave its group even if the broker numbered the group's
    generation 0. aiokafka only sends LeaveGroup when ``generation > 0``; brokers that
    count from 0 (tansu) then keep the departed member until its session times out, and
    the next member to join waits for that. LeaveGroup carries no generation, so sending
    it is safe. Uses aiokafka internals and does nothing if they are not as expected."""
    coordinator = getattr(consumer, "_coordinator", None)
    send = getattr(coordinator, "_send_req", None)
    if coordinator is None or send is None or getattr(coordinator, "generation", None) != 0:
        return

    async def leave() -> None:
        if coordinator.generation == 0 and coordinator._group_instance_id is None:
            request = LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
            try:
                await send(request)
            except KafkaError as exc:
                log.debug("LeaveGroup failed: %r", exc)
        coordinator.reset_generation()

    coordinator._maybe_leave_group = leave


def _check_created(response: Any) -> None:
    for topic, code, *rest in response.topic_errors:
        if code not in (0, TOPIC_ALREADY_EXISTS):
            message = rest[0] if rest else ""
            raise BusError(f"kafka: could not create topic {topic!r}: error {code} {message}")
