"""The repository suite: every test runs against SQLite and against PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from fleetcloud.core.errors import NotFound
from fleetcloud.core.ids import timestamp_ms
from fleetcloud.core.merge import merge_patch
from fleetcloud.core.types import CHANNEL_EVENTS, AgentKind, Event, Principal, Role
from fleetcloud.store import agents, outbox
from fleetcloud.store import channels as repo
from fleetcloud.store.base import Store
from fleetcloud.store.channels import AggregateItem, PublishItem
from fleetcloud.store.schema import LATEST_VERSION
from fleetcloud.store.sqlite import SqliteStore


async def device(store: Store) -> tuple[int, int]:
    organisation = await store.create_organisation("org")
    agent = await store.create_agent(organisation.id, AgentKind.DEVICE, "pump")
    return organisation.id, agent.id


async def test_migrations_are_applied_once(store: Store, database_url: str) -> None:
    assert await store.schema_version() == LATEST_VERSION
    await store.close()
    await store.start()  # a second start finds the schema current
    assert await store.schema_version() == LATEST_VERSION


async def test_tokens_are_stored_hashed_and_resolve_to_their_principal(store: Store) -> None:
    organisation_id, agent_id = await device(store)
    principal = Principal(agent_id, organisation_id, Role.DEVICE)
    token = await store.create_token(principal)
    assert await store.resolve_token(token) == principal
    assert await store.resolve_token(token + "x") is None
    from fleetcloud.store.ops import Fetch

    async def stored() -> list[str]:
        def work():  # type: ignore[no-untyped-def]
            rows = yield Fetch("SELECT hash FROM tokens")
            return [row[0] for row in rows]

        return await store.read(work())

    assert token not in await stored()
    assert agents.hash_token(token) in await stored()


async def test_expired_and_revoked_tokens_do_not_resolve(store: Store) -> None:
    organisation_id, agent_id = await device(store)
    principal = Principal(agent_id, organisation_id, Role.DEVICE)
    expired = await store.create_token(principal, ttl_seconds=-1)
    assert await store.resolve_token(expired) is None
    live = await store.create_token(principal)
    assert await store.write(agents.revoke_tokens(agent_id)) == 2
    assert await store.resolve_token(live) is None


async def test_agents_belong_to_one_organisation(store: Store) -> None:
    organisation_id, agent_id = await device(store)
    agent = await store.get_agent(agent_id)
    assert agent is not None
    assert agent.organisation_id == organisation_id
    assert agent.kind is AgentKind.DEVICE
    listed = await store.read(agents.list_agents(organisation_id, AgentKind.DEVICE))
    assert [a.id for a in listed] == [agent_id]
    with pytest.raises(NotFound):
        await store.create_agent(12345, AgentKind.DEVICE, "orphan")


async def test_publish_appends_history_and_folds_the_aggregate(store: Store) -> None:
    _, agent_id = await device(store)
    patches = [{"temp": 20, "nested": {"a": 1}}, {"humidity": 50}, {"nested": {"a": None, "b": 2}}]
    for patch in patches:
        await store.publish([PublishItem(agent_id, "sensors/climate/indoor", patch, agent_id)])
    channel = await store.read(repo.require_channel(agent_id, "sensors/climate/indoor"))
    history = await store.read(repo.list_messages(channel))
    assert [m.data for m in reversed(history)] == patches  # newest first
    expected = None
    for patch in patches:
        expected = merge_patch(expected, patch)
    assert channel.aggregate == expected == {"temp": 20, "humidity": 50, "nested": {"b": 2}}


async def test_publish_batch_spans_channels_and_keeps_order(store: Store) -> None:
    _, agent_id = await device(store)
    items = [PublishItem(agent_id, f"ch{i % 3}", {"n": i}, agent_id) for i in range(30)]
    results = await store.publish(items)
    assert all(r.success for r in results)
    for name in ("ch0", "ch1", "ch2"):
        channel = await store.read(repo.require_channel(agent_id, name))
        history = await store.read(repo.list_messages(channel, limit=100))
        numbers = [m.data["n"] for m in reversed(history)]
        assert numbers == sorted(numbers)
        assert channel.aggregate == {"n": numbers[-1]}


async def test_message_ids_make_publishing_idempotent(store: Store) -> None:
    _, agent_id = await device(store)
    item = PublishItem(agent_id, "counter", {"inc": 1}, agent_id, message_id=4242424242)
    first = await store.publish([item])
    again = await store.publish([item, item])
    assert first[0].message_id == again[0].message_id == again[1].message_id == 4242424242
    channel = await store.read(repo.require_channel(agent_id, "counter"))
    assert len(await store.read(repo.list_messages(channel))) == 1


async def test_ts_sets_the_message_time_and_history_pages_by_id(store: Store) -> None:
    _, agent_id = await device(store)
    base = 1_700_000_000_000
    items = [PublishItem(agent_id, "t", {"i": i}, agent_id, ts=base + i * 1000) for i in range(10)]
    results = await store.publish(items)
    ids = [r.message_id for r in results]
    assert [timestamp_ms(i) for i in ids if i] == [base + i * 1000 for i in range(10)]
    channel = await store.read(repo.require_channel(agent_id, "t"))
    page = await store.read(repo.list_messages(channel, before=ids[6], after=ids[2], limit=10))
    assert [m.data["i"] for m in page] == [5, 4, 3]
    limited = await store.read(repo.list_messages(channel, limit=2))
    assert [m.data["i"] for m in limited] == [9, 8]


async def test_schema_violations_fail_only_their_item(store: Store) -> None:
    _, agent_id = await device(store)
    schema = {"type": "object", "properties": {"temp": {"type": "number"}}, "required": ["temp"]}
    await store.write(repo.put_channel(agent_id, "strict", message_schema=schema))
    results = await store.publish(
        [
            PublishItem(agent_id, "strict", {"temp": 1}, agent_id),
            PublishItem(agent_id, "strict", {"temp": "hot"}, agent_id),
            PublishItem(agent_id, "other", {"anything": True}, agent_id),
        ]
    )
    assert [r.success for r in results] == [True, False, True]
    assert results[1].status == 422
    assert "temp" in (results[1].error or "")
    channel = await store.read(repo.require_channel(agent_id, "strict"))
    assert channel.aggregate == {"temp": 1}


async def test_aggregate_patch_put_and_replace(store: Store) -> None:
    _, agent_id = await device(store)
    merge = AggregateItem(agent_id, "state", {"a": {"x": 1, "y": 2}, "b": 1})
    await store.write(repo.update_aggregates([merge]))
    replace_a = AggregateItem(agent_id, "state", {"a": {"z": 3}}, "merge", "a")
    await store.write(repo.update_aggregates([replace_a]))
    channel = await store.read(repo.require_channel(agent_id, "state"))
    assert channel.aggregate == {"a": {"z": 3}, "b": 1}
    put = AggregateItem(agent_id, "state", {"only": True}, "replace")
    await store.write(repo.update_aggregates([put]))
    channel = await store.read(repo.require_channel(agent_id, "state"))
    assert channel.aggregate == {"only": True}
    assert channel.last_updated is not None


async def test_edit_and_delete_messages(store: Store) -> None:
    _, agent_id = await device(store)
    [result] = await store.publish([PublishItem(agent_id, "log", {"a": 1, "b": 2}, agent_id)])
    assert result.message_id is not None
    channel = await store.read(repo.require_channel(agent_id, "log"))
    edited = await store.write(
        repo.edit_message(channel, result.message_id, {"b": None, "c": 3}, merge=True)
    )
    assert edited.data == {"a": 1, "c": 3}
    replaced = await store.write(repo.edit_message(channel, result.message_id, [1], merge=False))
    assert replaced.data == [1]
    await store.write(repo.delete_message(channel, result.message_id))
    with pytest.raises(NotFound):
        await store.read(repo.get_message(channel, result.message_id))


async def test_events_are_written_to_the_outbox_with_the_data(store: Store) -> None:
    _, agent_id = await device(store)
    start = await store.read(outbox.last_position())
    heard: list[tuple[int, list[Event]]] = []
    store.add_commit_listener(lambda position, events: heard.append((position, list(events))))
    await store.publish([PublishItem(agent_id, "c", {"v": i}, agent_id) for i in range(3)])
    rows = await store.read(outbox.read_after(start))
    assert len(rows) == 1
    position, events = rows[0]
    kinds = [e.value["t"] for e in events]
    assert kinds == ["MessageCreate"] * 3 + ["AggregateUpdate"]
    assert {e.key for e in events} == {str(agent_id)}
    assert {e.topic for e in events} == {CHANNEL_EVENTS}
    assert events[-1].value["d"]["aggregate"]["data"] == {"v": 2}
    assert heard == [(position, events)]


async def test_a_failing_unit_does_not_undo_the_others_in_its_group(store: Store) -> None:
    _, agent_id = await device(store)

    def failing():  # type: ignore[no-untyped-def]
        yield from repo.put_channel(agent_id, "doomed")
        raise NotFound("on purpose")

    outcomes = await asyncio.gather(
        store.publish([PublishItem(agent_id, "kept", {"ok": 1}, agent_id)]),
        store.write(failing()),
        store.publish([PublishItem(agent_id, "kept", {"ok": 2}, agent_id)]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], NotFound)
    assert await store.read(repo.get_channel(agent_id, "doomed")) is None
    kept = await store.read(repo.require_channel(agent_id, "kept"))
    assert kept.aggregate == {"ok": 2}


async def test_channel_settings(store: Store) -> None:
    _, agent_id = await device(store)
    channel, created = await store.write(repo.put_channel(agent_id, "secret", is_private=True))
    assert created
    assert channel.is_private
    again, created_again = await store.write(repo.put_channel(agent_id, "secret"))
    assert not created_again
    assert again.is_private
    names = [c.name for c in await store.read(repo.list_channels(agent_id))]
    assert names == ["secret"]


async def test_sqlite_checkpoints_in_the_background(tmp_path: Path) -> None:
    """The WAL is copied into the database file by the checkpointer thread, not left to a
    commit: what was written shows in the file itself (read ignoring the WAL) well before
    the writer's own limit of pages could be reached."""
    path = tmp_path / "fleetcloud.db"
    async with SqliteStore(str(path)) as store:
        organisation = await store.create_organisation("checkpointed")
        agent = await store.create_agent(organisation.id, AgentKind.DEVICE, "d")
        await store.publish([PublishItem(agent.id, "c", {"n": n}, agent.id) for n in range(50)])
        async with asyncio.timeout(30):
            while store.checkpoints == 0:  # noqa: ASYNC110 - set by another thread
                await asyncio.sleep(0.05)
        with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as file:
            (count,) = file.execute("SELECT count(*) FROM messages").fetchone()
        assert count == 50


async def test_command_history_survives_its_rekeying_by_seq(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 201 moves each transition of an existing database from the old table
    (found by ``request_id``) to the new one (keyed by the command's ``seq``)."""
    import fleetcloud.store.postgres
    import fleetcloud.store.sqlite
    from fleetcloud.commands import lifecycle
    from fleetcloud.commands.core.models import CommandStatus
    from fleetcloud.store import open_store
    from fleetcloud.store.ops import ExecuteMany, Op, Work, placeholders
    from fleetcloud.store.schema import all_migrations

    def run(*ops: Op) -> Work[None]:
        for op in ops:  # noqa: UP028 - the store sends each result in: a tuple cannot take it
            yield op

    before = tuple(m for m in all_migrations() if m.version != 201)
    for module in (fleetcloud.store.sqlite, fleetcloud.store.postgres):
        monkeypatch.setattr(module, "all_migrations", lambda: before)
    async with open_store(database_url) as old:
        _, agent_id = await device(old)
        commands, history = [], []
        for n, request_id in enumerate(("r-one", "r-two")):
            commands.append(
                (request_id, 1000 + n, None, agent_id, None, str(agent_id), "reboot", "mqtt",
                 "json", "{}", "{}", 1, None, "DELIVERED", None, 1, 1, 1)
            )  # fmt: skip
            for step, status in enumerate(("QUEUED", "SENT", "DELIVERED")):
                history.append((10 * n + step, request_id, status, None, 100 + step))
        await old.write(
            run(
                ExecuteMany(
                    f"INSERT INTO commands ({lifecycle.COLUMNS}) VALUES ({placeholders(18)})",  # noqa: S608 - constant columns
                    commands,
                ),
                ExecuteMany(
                    "INSERT INTO command_history (id, request_id, status, reason, at_ms) "
                    "VALUES (?, ?, ?, ?, ?)",
                    history,
                ),
            )
        )
    monkeypatch.undo()
    async with open_store(database_url) as migrated:
        assert await migrated.schema_version() == LATEST_VERSION
        for request_id in ("r-one", "r-two"):
            entries = await migrated.read(lifecycle.history(request_id))
            assert [entry.status for entry in entries] == [
                CommandStatus.QUEUED, CommandStatus.SENT, CommandStatus.DELIVERED,
            ]  # fmt: skip
            assert [entry.at_ms for entry in entries] == [100, 101, 102]
