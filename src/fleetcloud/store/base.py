"""The ``Store`` interface and the helpers both databases share."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fleetcloud.core.errors import ConfigError
from fleetcloud.core.types import Agent, AgentKind, Event, Organisation, Principal, Role
from fleetcloud.store import agents, outbox
from fleetcloud.store.channels import PublishItem, PublishResult, publish
from fleetcloud.store.ops import Work

T = TypeVar("T")
CommitListener = Callable[[int, Sequence[Event]], None]
"""Called on the event loop after a transaction that emitted events commits, with the
outbox position of its row and the events."""

log = logging.getLogger("fleetcloud.store")

__all__ = ["PublishItem", "PublishResult", "Store", "open_store"]


class Store(ABC):
    """Runs units of work (see ``store.ops``) against one database.

    Writes go through a single writer per process that commits them in groups: work that
    arrives while a transaction is open joins the next one, each in its own savepoint, so
    one failing unit does not undo the others. Events a unit emits are written to the
    outbox in the same transaction; listeners hear of them after the commit.
    """

    dialect: str
    url: str

    def __init__(self) -> None:
        self._listeners: list[CommitListener] = []

    @abstractmethod
    async def start(self) -> None:
        """Connect, and bring the schema up to date."""

    @abstractmethod
    async def close(self) -> None:
        """Finish queued writes and disconnect."""

    @abstractmethod
    async def write(self, work: Work[T]) -> T:
        """Run ``work`` in a write transaction and return its result."""

    @abstractmethod
    async def read(self, work: Work[T]) -> T:
        """Run ``work`` on a read connection (it must not emit events)."""

    @abstractmethod
    async def schema_version(self) -> int: ...

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def remove_commit_listener(self, listener: CommitListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _settle(
        self,
        outcomes: Sequence[tuple[asyncio.Future[Any], Any, BaseException | None]],
        position: int,
        events: Sequence[Event],
    ) -> None:
        """Hand each unit of a committed (or failed) group its result, then tell the
        listeners about the group's events."""
        for future, value, error in outcomes:
            if future.done():
                continue
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)
        if events:
            self._notify(position, events)

    def _notify(self, position: int, events: Sequence[Event]) -> None:
        for listener in list(self._listeners):
            try:
                listener(position, events)
            except Exception:
                log.exception("commit listener %r failed", listener)

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Shortcuts for the calls most callers make.

    async def create_organisation(self, name: str) -> Organisation:
        return await self.write(agents.create_organisation(name))

    async def create_agent(self, organisation_id: int, kind: AgentKind, name: str) -> Agent:
        return await self.write(agents.create_agent(organisation_id, kind, name))

    async def get_agent(self, agent_id: int) -> Agent | None:
        return await self.read(agents.get_agent(agent_id))

    async def create_token(self, principal: Principal, **options: Any) -> str:
        return await self.write(agents.create_token(principal, **options))

    async def resolve_token(self, token: str) -> Principal | None:
        return await self.read(agents.resolve_token(token))

    async def publish(self, items: Sequence[PublishItem]) -> list[PublishResult]:
        return await self.write(publish(items))

    async def append_events(self, events: Sequence[Event]) -> None:
        await self.write(outbox.append(events))

    async def admin_principal(self, organisation: Organisation) -> Principal:
        return Principal(organisation.agent_id, organisation.id, Role.ADMIN)


def open_store(url: str) -> Store:
    """A store for ``url``: ``sqlite:///path/to/file.db`` (or a bare path) or
    ``postgresql://user@host:port/database``."""
    if url.startswith(("postgresql://", "postgres://")):
        from fleetcloud.store.postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite://"):
        # sqlite:///relative.db and sqlite:////absolute/path.db, as SQLAlchemy spells them
        path = url.removeprefix("sqlite://").removeprefix("/")
        if not path:
            raise ConfigError(f"database URL {url!r} names no file: use sqlite:///FILE")
        from fleetcloud.store.sqlite import SqliteStore

        return SqliteStore(path)
    if "://" in url:
        raise ConfigError(
            f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://HOST/DB"
        )
    from fleetcloud.store.sqlite import SqliteStore

    return SqliteStore(url)
