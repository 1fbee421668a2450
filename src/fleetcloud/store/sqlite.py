"""SQLite (WAL) through the standard library driver.

One writer thread owns the write connection and commits work in groups; reads run on a
small pool of reader threads with their own connections, which WAL lets proceed while
the writer writes. A committed transaction survives the process being killed
(``synchronous=NORMAL`` only risks the last commits on power loss, not on a crash).

Checkpoints (copying the WAL back into the database file, with its ``fsync``) run on a
checkpointer thread of their own, ``PASSIVE`` so that they never block the writer, about
every ``CHECKPOINT_SECONDS`` while commits come. Left to SQLite, every thousandth page
written would make one commit wait tens of milliseconds for a checkpoint, and everything
queued behind it too. The writer still checkpoints by itself past ``WAL_LIMIT_PAGES``, so
the WAL stays bounded if the checkpointer cannot keep up (a long read holding it back).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fleetcloud.core.errors import FleetError, StoreError
from fleetcloud.core.types import Event
from fleetcloud.store import outbox
from fleetcloud.store.base import Store
from fleetcloud.store.ops import Execute, ExecuteMany, Fetch, Op, Work
from fleetcloud.store.schema import VERSION_TABLE, all_migrations

T = TypeVar("T")
log = logging.getLogger("fleetcloud.store.sqlite")

GROUP_LIMIT = 512  # units of work committed together at most
CHECKPOINT_SECONDS = 0.5
WAL_LIMIT_PAGES = 16_384  # 64 MiB of 4 KiB pages
_STOP = object()


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB
    return conn


def run_op(conn: sqlite3.Connection, op: Op, emitted: list[Event]) -> Any:
    if isinstance(op, Fetch):
        return conn.execute(op.sql, op.params).fetchall()
    if isinstance(op, Execute):
        return conn.execute(op.sql, op.params).rowcount
    if isinstance(op, ExecuteMany):
        conn.executemany(op.sql, op.rows)
        return None
    emitted.extend(op.events)
    return None


def drive(conn: sqlite3.Connection, work: Work[T], emitted: list[Event]) -> T:
    """Run a unit of work to completion on ``conn``."""
    try:
        op = next(work)
        while True:
            try:
                result = run_op(conn, op, emitted)
            except sqlite3.Error as exc:
                op = work.throw(StoreError(f"database error: {exc}"))
            else:
                op = work.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class SqliteStore(Store):
    dialect = "sqlite"

    def __init__(self, path: str, *, readers: int = 2) -> None:
        super().__init__()
        self.path = path
        self.url = f"sqlite:///{path}"
        self._reader_count = readers
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._committed = threading.Event()  # set by the writer, cleared by the checkpointer
        self._stopping = threading.Event()
        self.checkpoints = 0  # background checkpoints done
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._migrate)
        self._writer = threading.Thread(
            target=self._write_loop, name="fleetcloud-sqlite-writer", daemon=True
        )
        self._writer.start()
        self._stopping.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="fleetcloud-sqlite-checkpointer", daemon=True
        )
        self._checkpointer.start()
        self._readers = ThreadPoolExecutor(self._reader_count, "fleetcloud-sqlite-reader")

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._checkpointer is not None:
            self._stopping.set()
            self._committed.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None

    async def schema_version(self) -> int:
        return await self.read(_version())

    async def write(self, work: Work[T]) -> T:
        if self._writer is None or self._loop is None:
            work.close()
            raise StoreError("the store is not started")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((work, future))
        return await future

    async def read(self, work: Work[T]) -> T:
        if self._readers is None:
            work.close()
            raise StoreError("the store is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, work)

    def _read(self, work: Work[T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        emitted: list[Event] = []
        result = drive(conn, work, emitted)
        if emitted:
            raise StoreError("read work may not emit events")
        return result

    def _migrate(self) -> None:
        conn = connect(self.path)
        try:
            conn.execute(VERSION_TABLE)
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
            for migration in all_migrations():
                if migration.version in applied:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                for statement in migration.sqlite:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?)",
                    (migration.version, migration.description, int(time.time() * 1000)),
                )
                conn.execute("COMMIT")
                log.info("applied migration %d: %s", migration.version, migration.description)
        except sqlite3.Error as exc:
            raise StoreError(f"could not migrate {self.path}: {exc}") from exc
        finally:
            conn.close()

    # ------------------------------------------------------------ the writer thread

    def _write_loop(self) -> None:
        conn = connect(self.path)
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_LIMIT_PAGES}")
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                jobs = [first]
                while len(jobs) < GROUP_LIMIT:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is _STOP:
                        self._queue.put(_STOP)
                        break
                    jobs.append(job)
                self._commit_group(conn, jobs)
        finally:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, jobs: list[Any]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        events: list[Event] = []
        position = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            for work, future in jobs:
                outcomes.append(self._run_job(conn, work, future, events))
            if events:
                cursor = conn.execute(
                    "INSERT INTO outbox (created_ms, payload) VALUES (?, ?)",
                    (int(time.time() * 1000), outbox.encode(events)),
                )
                position = cursor.lastrowid or 0
            conn.execute("COMMIT")
            self._committed.set()
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StoreError(f"could not commit: {exc}")
            outcomes = [(future, None, failure) for _, future in jobs]
            events = []
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._settle, outcomes, position, events)

    def _checkpoint_loop(self) -> None:
        conn = connect(self.path)
        try:
            while True:
                self._committed.wait()
                if self._stopping.is_set():
                    return
                # let commits gather: a checkpoint copies a page once however often it changed
                if self._stopping.wait(CHECKPOINT_SECONDS):
                    return
                self._committed.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed (the writer will do it): %s", exc)
        finally:
            conn.close()

    def _run_job(
        self, conn: sqlite3.Connection, work: Work[Any], future: Any, events: list[Event]
    ) -> tuple[asyncio.Future[Any], Any, BaseException | None]:
        emitted: list[Event] = []
        conn.execute("SAVEPOINT unit")
        try:
            value = drive(conn, work, emitted)
        except Exception as exc:
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
            if not isinstance(exc, FleetError):
                log.exception("unit of work failed")
                exc = StoreError(f"unexpected store failure: {exc!r}")
            return future, None, exc
        conn.execute("RELEASE unit")
        events.extend(emitted)
        return future, value, None


def _version() -> Work[int]:
    rows = yield Fetch("SELECT coalesce(max(version), 0) FROM schema_version")
    return int(rows[0][0])
