"""The commands feature's tables (schema versions 200-299).

``store/schema.py`` lists these in ``FEATURE_MIGRATIONS``. This module imports nothing
from fleetcloud, so the store can import it without a cycle; each entry is
``(version, description, sqlite statements, postgres statements)``.

- ``commands``: one row per command, its current status and why; ``seq`` (a snowflake
  id given when the command is recorded) orders a device's commands.
- ``command_history``: every transition, in order, keyed by its command's ``seq``.
- ``command_parsers``: parser scripts uploaded by an organisation, by reference.
- ``command_devices``: a device's parser settings (uplink parser and its ``config``).
- ``mqtt_credentials``: Mosquitto password hashes of device tokens (tokens themselves are
  kept only as SHA-256, which a broker cannot check a password against).
"""

from __future__ import annotations

_V200 = (
    """CREATE TABLE commands (
        request_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        organisation_id BIGINT,
        agent_id BIGINT,
        author_id BIGINT,
        device_id TEXT NOT NULL,
        command_type TEXT NOT NULL,
        protocol TEXT NOT NULL,
        parser_script_ref TEXT NOT NULL,
        payload TEXT NOT NULL,
        metadata TEXT NOT NULL,
        timestamp_ms BIGINT NOT NULL,
        expires_ms BIGINT,
        status TEXT NOT NULL,
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL
    )""",
    "CREATE INDEX commands_by_agent ON commands (agent_id, seq)",
    "CREATE INDEX commands_pending ON commands (protocol, agent_id, seq) "
    "WHERE status IN ('QUEUED', 'SENT')",
    """CREATE TABLE command_history (
        id BIGINT PRIMARY KEY,
        request_id TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        at_ms BIGINT NOT NULL
    )""",
    "CREATE INDEX command_history_by_request ON command_history (request_id, id)",
    """CREATE TABLE command_parsers (
        organisation_id BIGINT NOT NULL,
        ref TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        source TEXT NOT NULL,
        version INTEGER NOT NULL,
        author_id BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (organisation_id, ref)
    )""",
    """CREATE TABLE command_devices (
        agent_id BIGINT PRIMARY KEY,
        parser_script_ref TEXT,
        config TEXT NOT NULL,
        updated_ms BIGINT NOT NULL
    )""",
    """CREATE TABLE mqtt_credentials (
        agent_id BIGINT PRIMARY KEY,
        organisation_id BIGINT NOT NULL,
        password_hash TEXT NOT NULL,
        updated_ms BIGINT NOT NULL
    )""",
)

# History keyed by its command's ``seq`` (a snowflake, so rows go in near the end of the
# key space) instead of an index on ``request_id`` (random UUIDs: every row written
# touched a random page of that index).
_V201_COPY = (
    "INSERT INTO command_history (seq, id, status, reason, at_ms) "
    "SELECT c.seq, h.id, h.status, h.reason, h.at_ms FROM command_history_by_id h "
    "JOIN commands c ON c.request_id = h.request_id"
)
_V201_TABLE = """CREATE TABLE command_history (
        seq BIGINT NOT NULL,
        id BIGINT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (seq, id)
    )"""
_V201_RENAME = "ALTER TABLE command_history RENAME TO command_history_by_id"
_V201_DROP = "DROP TABLE command_history_by_id"
_V201_SQLITE = (_V201_RENAME, _V201_TABLE + " WITHOUT ROWID", _V201_COPY, _V201_DROP)
_V201_POSTGRES = (_V201_RENAME, _V201_TABLE, _V201_COPY, _V201_DROP)

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        200,
        "commands, history, parser scripts, device parser settings, MQTT credentials",
        _V200,
        _V200,
    ),
    (201, "command history keyed by the command's seq", _V201_SQLITE, _V201_POSTGRES),
)
