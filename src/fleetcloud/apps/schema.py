"""The apps feature's tables (schema versions 300-399, listed in ``store.schema``).

This module imports nothing from fleetcloud, so the store can import it without a cycle;
each entry is ``(version, description, sqlite statements, postgres statements)``.

- ``app_packages``: deployment packages (zip bytes), by SHA-256 — stored in the database
  so that every process (API, dispatcher) reads the same ones; workers run them from an
  extracted copy in a local cache directory.
- ``apps`` and ``app_versions``: an app (per organisation, by name) and each deploy of it:
  the package, its handler, ``Timeout``, ``MemorySize`` and the ``doover_config.json``
  entry (with ``config_schema``).
- ``app_installations``: an app on an agent, with its deployment config, its own app agent
  (the author of what it writes) and, for integrations, the ingestion tokens.
- ``app_schedules``: when an installation's ``on_schedule`` fires next.
- ``app_deliveries``: events waiting to be handed to an installation (or being handled,
  ``owner`` + ``lease_ms``), unique per ``(installation, op, event_id)``; a failed attempt
  stays with a later ``due_ms`` until it succeeds or becomes a dead letter.
- ``app_invocations``: the invocation log, one row per attempt.
- ``app_dead_letters``: deliveries that failed every attempt.
"""

from __future__ import annotations

_TABLES = (
    """CREATE TABLE apps (
        id BIGINT PRIMARY KEY,
        organisation_id BIGINT NOT NULL,
        name TEXT NOT NULL,
        display_name TEXT NOT NULL,
        type TEXT NOT NULL,
        latest_version BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        UNIQUE (organisation_id, name)
    )""",
    """CREATE TABLE app_versions (
        id BIGINT PRIMARY KEY,
        app_id BIGINT NOT NULL,
        version BIGINT NOT NULL,
        package_sha256 TEXT NOT NULL,
        package_size BIGINT NOT NULL,
        handler TEXT NOT NULL,
        timeout_seconds BIGINT NOT NULL,
        memory_mb BIGINT NOT NULL,
        config TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        UNIQUE (app_id, version)
    )""",
    """CREATE TABLE app_installations (
        id BIGINT PRIMARY KEY,
        organisation_id BIGINT NOT NULL,
        app_id BIGINT NOT NULL,
        agent_id BIGINT NOT NULL,
        app_agent_id BIGINT NOT NULL,
        app_key TEXT NOT NULL,
        deployment_config TEXT NOT NULL,
        ingestion_token TEXT,
        mini_token TEXT,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        UNIQUE (agent_id, app_key)
    )""",
    "CREATE INDEX app_installations_by_app ON app_installations (app_id)",
    "CREATE INDEX app_installations_by_organisation ON app_installations (organisation_id)",
    """CREATE TABLE app_schedules (
        installation_id BIGINT PRIMARY KEY,
        expression TEXT NOT NULL,
        next_ms BIGINT
    )""",
    "CREATE INDEX app_schedules_due ON app_schedules (next_ms)",
    """CREATE TABLE app_deliveries (
        id BIGINT PRIMARY KEY,
        installation_id BIGINT NOT NULL,
        op TEXT NOT NULL,
        event_id TEXT NOT NULL,
        data TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        due_ms BIGINT NOT NULL,
        owner TEXT,
        lease_ms BIGINT NOT NULL,
        last_error TEXT,
        created_ms BIGINT NOT NULL,
        UNIQUE (installation_id, op, event_id)
    )""",
    "CREATE INDEX app_deliveries_due ON app_deliveries (due_ms)",
    "CREATE INDEX app_deliveries_by_owner ON app_deliveries (owner)",
    """CREATE TABLE app_dead_letters (
        id BIGINT PRIMARY KEY,
        installation_id BIGINT NOT NULL,
        op TEXT NOT NULL,
        event_id TEXT NOT NULL,
        data TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        error TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    )""",
    "CREATE INDEX app_dead_letters_by_installation ON app_dead_letters (installation_id, id)",
)

_INVOCATIONS = """CREATE TABLE app_invocations (
        id BIGINT PRIMARY KEY,
        installation_id BIGINT NOT NULL,
        app_id BIGINT NOT NULL,
        version BIGINT NOT NULL,
        agent_id BIGINT NOT NULL,
        op TEXT NOT NULL,
        event_id TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        status TEXT NOT NULL,
        started_us BIGINT NOT NULL,
        duration_ms {real} NOT NULL,
        error TEXT,
        logs TEXT NOT NULL,
        summary TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    )"""

_INDEXES = (
    "CREATE INDEX app_invocations_by_installation ON app_invocations (installation_id, id)",
    "CREATE INDEX app_invocations_by_event ON app_invocations (installation_id, event_id)",
    "CREATE INDEX app_invocations_by_time ON app_invocations (created_ms)",
)

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        300,
        "apps: packages, versions, installations, schedules, deliveries, invocations",
        (
            """CREATE TABLE app_packages (
                sha256 TEXT PRIMARY KEY,
                size BIGINT NOT NULL,
                data BLOB NOT NULL,
                created_ms BIGINT NOT NULL
            )""",
            *_TABLES,
            _INVOCATIONS.format(real="REAL"),
            *_INDEXES,
        ),
        (
            """CREATE TABLE app_packages (
                sha256 TEXT PRIMARY KEY,
                size BIGINT NOT NULL,
                data BYTEA NOT NULL,
                created_ms BIGINT NOT NULL
            )""",
            *_TABLES,
            _INVOCATIONS.format(real="DOUBLE PRECISION"),
            *_INDEXES,
        ),
    ),
)
