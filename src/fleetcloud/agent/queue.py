"""The store-and-forward queue: device apps' writes on disk until the cloud has them.

A SQLite file (``outbox.db`` in the data directory; WAL, ``synchronous=FULL`` so an
accepted write survives a crash or a power cut). Two kinds of write share one queue and
leave in the order they came: messages (``put``) and aggregate merge-patches
(``put_patch``, with an optional ``replace`` path). Each message gets its message id when
it is accepted — a snowflake, so the cloud's history sorts them by the time they were
published, not the time they arrived — and the id makes the cloud's write idempotent: a
message sent twice (the agent died before it could note the first send) is stored once.
A patch sent again before anything after it changes nothing more (a merge-patch is
idempotent), so a resend after a crash is harmless too.

The queue is bounded by count and bytes; past the bound a put raises ``QueueFull``.

The same file keeps the last copy of each channel aggregate the device apps read
(``aggregate_cache``), so an app that starts while the cloud is unreachable still gets
its tags, config and UI commands (see ``local_api.py``).

All SQLite work runs on one thread of its own, so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fleetcloud.agent.errors import QueueFull
from fleetcloud.core import jsonish
from fleetcloud.core.ids import SnowflakeGenerator

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    data BLOB NOT NULL,
    message_id INTEGER NOT NULL,
    enqueued_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    data BLOB NOT NULL,
    message_id INTEGER NOT NULL,
    error TEXT NOT NULL,
    rejected_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS aggregate_cache (
    channel TEXT PRIMARY KEY,
    aggregate BLOB NOT NULL,
    stored_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_by_channel ON queue (channel, seq);
"""
# Columns added after the first release; files written by an older agent get them on open.
ADDED_COLUMNS = (
    ("queue", "kind", "TEXT NOT NULL DEFAULT 'message'"),
    ("queue", "replace_path", "TEXT"),
    ("rejected", "kind", "TEXT NOT NULL DEFAULT 'message'"),
    ("rejected", "replace_path", "TEXT"),
)
MAX_REJECTED = 1000
MAX_CACHED = 1000  # aggregates kept for offline reads (the most recently changed ones)
MESSAGE = "message"
PATCH = "patch"


@dataclass(frozen=True)
class QueuedMessage:
    """A queued write: a message (``kind`` "message") or an aggregate patch ("patch")."""

    seq: int
    channel: str
    data: bytes  # JSON
    message_id: int
    kind: str = MESSAGE
    replace: str | None = None  # a patch's ``replace=`` path

    def item(self, agent_id: str) -> dict[str, Any]:
        """The write as an item of the data API's batch publish (or batch patch)."""
        item: dict[str, Any] = {
            "agent_id": agent_id,
            "channel_name": self.channel,
            "data": jsonish.loads(self.data),
        }
        if self.kind == PATCH:
            if self.replace is not None:
                item["replace"] = self.replace
        else:
            item["message_id"] = str(self.message_id)
        return item


SELECT_QUEUED = "SELECT seq, channel, data, message_id, kind, replace_path FROM queue"


def queued(row: tuple[Any, ...]) -> QueuedMessage:
    seq, channel, data, message_id, kind, replace = row
    return QueuedMessage(
        int(seq), str(channel), bytes(data), int(message_id), str(kind), replace or None
    )


def connect(path: Path) -> sqlite3.Connection:
    path.touch(mode=0o600, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    for table, column, definition in ADDED_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:  # names and types are the constants above
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    return db


def stats(path: Path) -> dict[str, int]:
    """How many messages wait (and their bytes), and how many the cloud refused; read
    from the file directly, so ``fleetcloud agent status`` works whether or not the
    agent runs."""
    if not path.exists():
        return {"pending": 0, "pending_bytes": 0, "rejected": 0}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        query = "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM queue"
        count, size = db.execute(query).fetchone()
        rejected = db.execute("SELECT COUNT(*) FROM rejected").fetchone()[0]
    return {"pending": int(count), "pending_bytes": int(size), "rejected": int(rejected)}


class MessageQueue:
    def __init__(self, path: Path, *, max_messages: int = 10_000, max_bytes: int = 64 << 20):
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.added = asyncio.Event()
        self.count = 0
        self.bytes = 0
        self._db: sqlite3.Connection | None = None
        self._ids: SnowflakeGenerator | None = None
        self._last_id = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-queue")

    async def __aenter__(self) -> MessageQueue:
        await self._call(self._open)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._call(self._close)
        self._thread.shutdown(wait=True)

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    # ------------------------------------------------------------ the API

    async def put(
        self, channel: str, data: Any, *, ts: int | None = None, message_id: int | None = None
    ) -> QueuedMessage:
        """Accept a message (durably) or raise ``QueueFull``."""
        encoded = jsonish.dumps(data)
        message = await self._call(self._put, channel, encoded, ts, message_id, MESSAGE, None)
        self.added.set()
        return message

    async def put_patch(self, channel: str, data: Any, replace: str | None = None) -> QueuedMessage:
        """Accept a merge-patch of ``channel``'s aggregate (durably) or raise ``QueueFull``."""
        encoded = jsonish.dumps(data)
        patch = await self._call(self._put, channel, encoded, None, None, PATCH, replace)
        self.added.set()
        return patch

    async def pending(self, channel: str) -> list[QueuedMessage]:
        """The writes to ``channel`` still waiting for the cloud, oldest first."""
        return await self._call(self._pending, channel)

    async def cached_aggregate(self, channel: str) -> dict[str, Any] | None:
        """The last copy of ``channel``'s aggregate kept by ``keep_aggregate``, if any."""
        return await self._call(self._cached, channel)

    async def keep_aggregate(self, channel: str, aggregate: dict[str, Any] | None) -> None:
        """Keep (durably) the cloud's copy of an aggregate; ``None`` forgets it."""
        encoded = None if aggregate is None else jsonish.dumps(aggregate)
        await self._call(self._keep, channel, encoded)

    async def peek(self, limit: int, max_bytes: int) -> list[QueuedMessage]:
        """The oldest messages, at most ``limit`` of them and about ``max_bytes``."""
        return await self._call(self._peek, limit, max_bytes)

    async def remove(self, messages: list[QueuedMessage]) -> None:
        await self._call(self._remove, messages, {})

    async def reject(self, refused: dict[int, str], messages: list[QueuedMessage]) -> None:
        """Remove ``messages``; those whose seq is in ``refused`` are kept aside with the
        cloud's reason (the last ``MAX_REJECTED`` of them) for ``agent status``."""
        await self._call(self._remove, messages, refused)

    # ------------------------------------------------------------ on the queue's thread

    def _db_(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the message queue is not open")
        return self._db

    def _open(self) -> None:
        self._db = db = connect(self.path)
        node = self._meta("node")
        if node is None:
            node = secrets.randbelow(1024)
            db.execute("INSERT INTO meta VALUES ('node', ?)", (node,))
        self._ids = SnowflakeGenerator(node)
        self._last_id = self._meta("last_id") or 0
        count, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM queue"
        ).fetchone()
        self.count, self.bytes = int(count), int(size)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _meta(self, key: str) -> int | None:
        row = self._db_().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def _next_id(self, ts: int | None) -> int:
        if self._ids is None:
            raise RuntimeError("the message queue is not open")
        if ts is not None:
            return self._ids.id_at(ts)
        # Later than every id given before, even if the clock stepped back since.
        self._last_id = max(self._ids.next_id(), self._last_id + 1)
        return self._last_id

    def _put(
        self,
        channel: str,
        data: bytes,
        ts: int | None,
        message_id: int | None,
        kind: str,
        replace: str | None,
    ) -> QueuedMessage:
        if self.count + 1 > self.max_messages or self.bytes + len(data) > self.max_bytes:
            raise QueueFull(
                f"the agent's queue of messages for the cloud is full ({self.count} messages, "
                f"{self.bytes} bytes; bounds {self.max_messages} and {self.max_bytes}); it "
                "empties as soon as the cloud is reachable again"
            )
        db = self._db_()
        message_id = message_id or self._next_id(ts)
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = db.execute(
                "INSERT INTO queue (channel, data, message_id, enqueued_ms, kind, replace_path) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (channel, data, message_id, int(time.time() * 1000), kind, replace),
            )
            db.execute(
                "INSERT INTO meta VALUES ('last_id', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                (self._last_id,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.count += 1
        self.bytes += len(data)
        return QueuedMessage(int(cursor.lastrowid or 0), channel, data, message_id, kind, replace)

    def _peek(self, limit: int, max_bytes: int) -> list[QueuedMessage]:
        rows = self._db_().execute(f"{SELECT_QUEUED} ORDER BY seq LIMIT ?", (limit,))
        found: list[QueuedMessage] = []
        size = 0
        for row in rows:
            size += len(row[2])
            if found and size > max_bytes:
                break
            found.append(queued(row))
        return found

    def _pending(self, channel: str) -> list[QueuedMessage]:
        rows = self._db_().execute(f"{SELECT_QUEUED} WHERE channel = ? ORDER BY seq", (channel,))
        return [queued(row) for row in rows]

    def _cached(self, channel: str) -> dict[str, Any] | None:
        row = (
            self._db_()
            .execute("SELECT aggregate FROM aggregate_cache WHERE channel = ?", (channel,))
            .fetchone()
        )
        if row is None:
            return None
        found = jsonish.loads(row[0])
        return found if isinstance(found, dict) else None

    def _keep(self, channel: str, aggregate: bytes | None) -> None:
        db = self._db_()
        db.execute("BEGIN IMMEDIATE")
        try:
            if aggregate is None:
                db.execute("DELETE FROM aggregate_cache WHERE channel = ?", (channel,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO aggregate_cache VALUES (?, ?, ?)",
                    (channel, aggregate, int(time.time() * 1000)),
                )
                db.execute(
                    "DELETE FROM aggregate_cache WHERE channel NOT IN (SELECT channel FROM "
                    "aggregate_cache ORDER BY stored_ms DESC, rowid DESC LIMIT ?)",
                    (MAX_CACHED,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _remove(self, messages: list[QueuedMessage], refused: dict[int, str]) -> None:
        if not messages:
            return
        db = self._db_()
        now = int(time.time() * 1000)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM queue WHERE seq = ?", [(m.seq,) for m in messages])
            db.executemany(
                "INSERT OR REPLACE INTO rejected (seq, channel, data, message_id, error, "
                "rejected_ms, kind, replace_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (m.seq, m.channel, m.data, m.message_id, refused[m.seq], now, m.kind, m.replace)
                    for m in messages
                    if m.seq in refused
                ],
            )
            if refused:
                db.execute(
                    "DELETE FROM rejected WHERE seq NOT IN "
                    "(SELECT seq FROM rejected ORDER BY seq DESC LIMIT ?)",
                    (MAX_REJECTED,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.count -= len(messages)
        self.bytes -= sum(len(m.data) for m in messages)
