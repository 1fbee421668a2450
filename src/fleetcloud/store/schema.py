"""The schema, as numbered migrations recorded in ``schema_version``.

Each migration is a list of statements per dialect. Types are chosen so that the same
parameters work on both: ids are BIGINT, flags are INTEGER 0/1, JSON is TEXT.

Features own their tables: each keeps its migrations in its own package with a version
range of its own (data plane 1-99, jobs 100-199, commands 200-299, apps 300-399), and
they are listed in ``FEATURE_MIGRATIONS`` below. A start-up applies, in version order,
every migration not yet recorded — so features can add tables independently.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetcloud.apps.schema import MIGRATIONS as APP_MIGRATIONS
from fleetcloud.commands.schema import MIGRATIONS as COMMAND_MIGRATIONS
from fleetcloud.jobs.schema import MIGRATIONS as JOB_MIGRATIONS


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_COMMON_V1 = (
    """CREATE TABLE organisations (
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL,
        agent_id BIGINT NOT NULL,
        created_ms BIGINT NOT NULL
    )""",
    """CREATE TABLE agents (
        id BIGINT PRIMARY KEY,
        organisation_id BIGINT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    )""",
    "CREATE INDEX agents_by_organisation ON agents (organisation_id, kind)",
    """CREATE TABLE tokens (
        hash TEXT PRIMARY KEY,
        agent_id BIGINT NOT NULL,
        organisation_id BIGINT NOT NULL,
        role TEXT NOT NULL,
        scopes TEXT,
        label TEXT,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT
    )""",
    "CREATE INDEX tokens_by_agent ON tokens (agent_id)",
    """CREATE TABLE channels (
        id BIGINT PRIMARY KEY,
        agent_id BIGINT NOT NULL,
        name TEXT NOT NULL,
        is_private INTEGER NOT NULL DEFAULT 0,
        message_schema TEXT,
        aggregate_schema TEXT,
        aggregate TEXT,
        aggregate_attachments TEXT,
        last_updated BIGINT,
        UNIQUE (agent_id, name)
    )""",
    """CREATE TABLE bus_offsets (
        group_name TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "organisations, agents, tokens, channels, messages, outbox",
        sqlite=(
            *_COMMON_V1,
            # Clustered by channel so that history reads are one range scan.
            """CREATE TABLE messages (
                channel_id BIGINT NOT NULL,
                id BIGINT NOT NULL,
                author_id BIGINT NOT NULL,
                data TEXT NOT NULL,
                attachments TEXT,
                PRIMARY KEY (channel_id, id)
            ) WITHOUT ROWID""",
            """CREATE TABLE outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                created_ms BIGINT NOT NULL,
                payload BLOB NOT NULL
            )""",
        ),
        postgres=(
            *_COMMON_V1,
            """CREATE TABLE messages (
                channel_id BIGINT NOT NULL,
                id BIGINT NOT NULL,
                author_id BIGINT NOT NULL,
                data TEXT NOT NULL,
                attachments TEXT,
                PRIMARY KEY (channel_id, id)
            )""",
            """CREATE TABLE outbox (
                id BIGSERIAL PRIMARY KEY,
                created_ms BIGINT NOT NULL,
                payload BYTEA NOT NULL
            )""",
        ),
    ),
)

FEATURE_MIGRATIONS: tuple[Migration, ...] = (
    *(Migration(*migration) for migration in COMMAND_MIGRATIONS),
    *(Migration(*migration) for migration in JOB_MIGRATIONS),
    *(Migration(*migration) for migration in APP_MIGRATIONS),
)


def all_migrations() -> tuple[Migration, ...]:
    found = (*MIGRATIONS, *FEATURE_MIGRATIONS)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {sorted(versions)}")
    return tuple(sorted(found, key=lambda m: m.version))


VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_ms BIGINT NOT NULL
)"""

LATEST_VERSION = all_migrations()[-1].version
