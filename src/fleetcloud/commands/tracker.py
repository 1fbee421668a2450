"""``CommandTracker``: records commands and their transitions for the connectors.

Connectors change many commands' statuses concurrently (one task per device); the
tracker gathers the changes made while a write is in flight and applies them in one unit
of work (``lifecycle.transition``), in the order they were made, so a busy connector
costs a few transactions per second rather than one per transition.

It is an ``async with`` resource: its writer task lives in its own ``TaskGroup``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetcloud.commands import lifecycle
from fleetcloud.commands.core.models import CommandMessage, CommandStatus
from fleetcloud.commands.lifecycle import Change, StoredCommand
from fleetcloud.core.errors import FleetError
from fleetcloud.store.base import Store
from fleetcloud.store.ops import Work

BATCH_LIMIT = 1_000
LINGER = 0.01
DRAIN_TIMEOUT = 10.0  # seconds a write waits for more changes to join it
log = logging.getLogger("fleetcloud.commands.tracker")


@dataclass(slots=True)
class _Pending:
    changes: Sequence[Change]
    future: asyncio.Future[Any] | None  # None: nobody waits
    messages: Sequence[CommandMessage] | None = None  # a record, not changes


def _in_order(batch: Sequence[_Pending]) -> Work[list[Any]]:
    """One unit of work for a batch: records and runs of changes, in queue order, their
    history and channel messages saved together at the end; the result of each pending
    item, in order."""
    results: list[Any] = []
    run: list[_Pending] = []
    applied = lifecycle.Applied()

    def flush() -> Work[None]:
        if run:
            changes = [change for pending in run for change in pending.changes]
            changed = yield from lifecycle.transition(changes, applied)
            for pending in run:
                wanted = {change.request_id for change in pending.changes}
                results.append({k: v for k, v in changed.items() if k in wanted})
            run.clear()

    for pending in batch:
        if pending.messages is None:
            run.append(pending)
            continue
        yield from flush()
        results.append((yield from lifecycle.record(pending.messages, applied=applied)))
    yield from flush()
    yield from lifecycle.save(applied)
    return results


class CommandTracker:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CommandTracker:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._writer = self._group.create_task(self._write_loop(), name="command-tracker")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._writer is not None:
            self._writer.cancel()
        if self._group is not None:
            await self._group.__aexit__(None, None, None)
        self._writer = None
        if self._queue:  # write what was queued: a stop is not a reason to forget it
            with contextlib.suppress(FleetError, TimeoutError):
                await asyncio.wait_for(self._write(list(self._queue)), DRAIN_TIMEOUT)
        for pending in self._queue:
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(FleetError("the command tracker stopped"))
        self._queue.clear()

    # ------------------------------------------------------------ recording

    async def record(
        self,
        messages: Sequence[CommandMessage],
        *,
        author_id: int | None = None,
        emit_topic: str | None = None,
    ) -> list[StoredCommand]:
        """Store commands (idempotently by request_id) and return them as stored."""
        if not messages:
            return []
        return await self.store.write(
            lifecycle.record(messages, author_id=author_id, emit_topic=emit_topic)
        )

    async def change(
        self,
        request_id: str,
        status: CommandStatus,
        reason: str | None = None,
        *,
        attempt: bool = False,
    ) -> StoredCommand | None:
        """Move one command; returns it as it is now, or None if the move was refused."""
        changed = await self.apply([Change(request_id, status, reason, attempt)])
        return changed.get(request_id)

    async def apply(self, changes: Sequence[Change]) -> dict[str, StoredCommand]:
        """Apply several changes together (in order); returns the commands that moved."""
        if self._writer is None:
            return await self.store.write(lifecycle.transition(changes))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(changes, future))
        self._wakeup.set()
        result: dict[str, StoredCommand] = await future
        return result

    def record_soon(self, messages: Sequence[CommandMessage]) -> asyncio.Future[Any]:
        """Queue a record of ``messages`` ahead of any change queued after it; the future
        gives the commands as stored once written."""
        if self._writer is None:
            raise FleetError("the command tracker is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending((), future, messages))
        self._wakeup.set()
        return future

    def submit(self, changes: Sequence[Change]) -> None:
        """Queue changes without waiting for them (they are written in order with the
        others; a failure is logged, and the command keeps its previous status)."""
        if self._writer is None:
            raise FleetError("the command tracker is not running")
        self._queue.append(_Pending(changes, None))
        self._wakeup.set()

    # ------------------------------------------------------------ the writer

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if len(self._queue) < BATCH_LIMIT:
                # Let a batch gather: fewer, larger units cost far less per transition
                # (one channel lookup and one aggregate update per device per unit).
                await asyncio.sleep(LINGER)
            while self._queue:
                batch, count = [], 0
                while self._queue and count < BATCH_LIMIT:
                    pending = self._queue.popleft()
                    batch.append(pending)
                    count += len(pending.changes) + len(pending.messages or ())
                await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            results = await self.store.write(_in_order(batch))
        except FleetError as exc:
            log.warning("could not record %d command updates: %s", len(batch), exc.message)
            for pending in batch:
                if pending.future is not None and not pending.future.done():
                    pending.future.set_exception(exc)
            return
        for pending, result in zip(batch, results, strict=True):
            if pending.future is not None and not pending.future.done():
                pending.future.set_result(result)
