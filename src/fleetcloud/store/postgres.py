"""PostgreSQL through asyncpg, with the same group-committing writer as SQLite.

Several fleetcloud processes may share one database; each has its own writer task. SQL is
shared with SQLite and its ``?`` placeholders are rewritten to ``$1, $2, …`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from functools import lru_cache
from typing import Any, TypeVar

import asyncpg

from fleetcloud.core.errors import FleetError, StoreError
from fleetcloud.core.types import Event
from fleetcloud.store import outbox
from fleetcloud.store.base import Store
from fleetcloud.store.ops import Execute, ExecuteMany, Fetch, Op, Work
from fleetcloud.store.schema import VERSION_TABLE, all_migrations

T = TypeVar("T")
log = logging.getLogger("fleetcloud.store.postgres")

GROUP_LIMIT = 512
MIGRATION_LOCK = 7_301_001  # pg_advisory_xact_lock key: one migrating process at a time


@lru_cache(maxsize=2048)
def to_numbered(sql: str) -> str:
    """Rewrite ``?`` placeholders to ``$1, $2, …``."""
    counter = iter(range(1, 100_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


async def run_op(conn: asyncpg.Connection, op: Op, emitted: list[Event]) -> Any:
    if isinstance(op, Fetch):
        return [tuple(row) for row in await conn.fetch(to_numbered(op.sql), *op.params)]
    if isinstance(op, Execute):
        status = await conn.execute(to_numbered(op.sql), *op.params)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0
    if isinstance(op, ExecuteMany):
        if op.rows:
            await conn.executemany(to_numbered(op.sql), op.rows)
        return None
    emitted.extend(op.events)
    return None


async def drive(conn: asyncpg.Connection, work: Work[T], emitted: list[Event]) -> T:
    try:
        op = next(work)
        while True:
            try:
                result = await run_op(conn, op, emitted)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                op = work.throw(StoreError(f"database error: {exc}"))
            else:
                op = work.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class PostgresStore(Store):
    dialect = "postgres"

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        super().__init__()
        self.url = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[tuple[Work[Any], asyncio.Future[Any]] | None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=2, max_size=self._pool_size, command_timeout=60
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to {self.url}: {exc}") from exc
        await self._migrate()
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name="fleetcloud-pg-writer")

    async def close(self) -> None:
        if self._writer is not None and self._queue is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def schema_version(self) -> int:
        assert self._pool is not None
        value = await self._pool.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(value)

    async def write(self, work: Work[T]) -> T:
        if self._queue is None:
            work.close()
            raise StoreError("the store is not started")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put((work, future))
        return await future

    async def read(self, work: Work[T]) -> T:
        if self._pool is None:
            work.close()
            raise StoreError("the store is not started")
        emitted: list[Event] = []
        try:
            async with self._pool.acquire() as conn:
                result = await drive(conn, work, emitted)
        except (OSError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"database unavailable: {exc}") from exc
        if emitted:
            raise StoreError("read work may not emit events")
        return result

    async def _migrate(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(VERSION_TABLE)
            applied = {row[0] for row in await conn.fetch("SELECT version FROM schema_version")}
            for migration in all_migrations():
                if migration.version in applied:
                    continue
                for statement in migration.postgres:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version VALUES ($1, $2, $3)",
                    migration.version,
                    migration.description,
                    int(time.time() * 1000),
                )
                log.info("applied migration %d: %s", migration.version, migration.description)

    # ------------------------------------------------------------ the writer task

    async def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < GROUP_LIMIT and not self._queue.empty():
                job = self._queue.get_nowait()
                if job is None:
                    self._queue.put_nowait(None)
                    break
                jobs.append(job)
            await self._commit_group(jobs)

    async def _commit_group(self, jobs: list[tuple[Work[Any], asyncio.Future[Any]]]) -> None:
        assert self._pool is not None
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        events: list[Event] = []
        position = 0
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                for work, future in jobs:
                    outcomes.append(await self._run_job(conn, work, future, events))
                if events:
                    position = await conn.fetchval(
                        "INSERT INTO outbox (created_ms, payload) VALUES ($1, $2) RETURNING id",
                        int(time.time() * 1000),
                        outbox.encode(events),
                    )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            failure = StoreError(f"could not commit: {exc}")
            outcomes = [(future, None, failure) for _, future in jobs]
            events = []
        self._settle(outcomes, position, events)

    async def _run_job(
        self, conn: asyncpg.Connection, work: Work[Any], future: Any, events: list[Event]
    ) -> tuple[asyncio.Future[Any], Any, BaseException | None]:
        emitted: list[Event] = []
        savepoint = conn.transaction()
        await savepoint.start()
        try:
            value = await drive(conn, work, emitted)
        except Exception as exc:
            await savepoint.rollback()
            if not isinstance(exc, FleetError):
                log.exception("unit of work failed")
                exc = StoreError(f"unexpected store failure: {exc!r}")
            return future, None, exc
        await savepoint.commit()
        events.extend(emitted)
        return future, value, None
