"""The jobs feature's tables (migrations 100-199, listed in ``store.schema``).

One execution row per attempt: a retry adds a row with the next ``attempt`` and clears
``latest`` on the one before. The partial unique index ``job_executions_one_running``
lets a device hold at most one IN_PROGRESS execution — the database itself refuses a
second, whichever process tries. Targets not yet rolled out wait in ``job_targets``.

``store/schema.py`` lists these in ``FEATURE_MIGRATIONS``. This module imports nothing
from fleetcloud, so the store can import it without a cycle; each entry is
``(version, description, sqlite statements, postgres statements)``.
"""

from __future__ import annotations

_V100 = (
    """CREATE TABLE provisioning_keys (
        id BIGINT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        organisation_id BIGINT NOT NULL,
        label TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT,
        max_uses BIGINT,
        uses BIGINT NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX provisioning_keys_by_organisation ON provisioning_keys (organisation_id)",
    """CREATE TABLE device_groups (
        id BIGINT PRIMARY KEY,
        organisation_id BIGINT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        UNIQUE (organisation_id, name)
    )""",
    """CREATE TABLE device_group_members (
        group_id BIGINT NOT NULL,
        device_id BIGINT NOT NULL,
        PRIMARY KEY (group_id, device_id)
    )""",
    "CREATE INDEX device_group_members_by_device ON device_group_members (device_id)",
    """CREATE TABLE job_templates (
        id BIGINT PRIMARY KEY,
        organisation_id BIGINT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        document TEXT NOT NULL,
        parameters TEXT NOT NULL,
        timeout_seconds BIGINT,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        UNIQUE (organisation_id, name)
    )""",
    """CREATE TABLE jobs (
        id BIGINT PRIMARY KEY,
        organisation_id BIGINT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        status TEXT NOT NULL,
        target_type TEXT NOT NULL,
        targets TEXT NOT NULL,
        template_id BIGINT,
        parameters TEXT NOT NULL,
        document TEXT NOT NULL,
        timeout_seconds BIGINT NOT NULL,
        maximum_per_minute BIGINT,
        abort_criteria TEXT NOT NULL,
        retries TEXT NOT NULL,
        created_by BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        completed_ms BIGINT,
        reason TEXT,
        force_canceled INTEGER NOT NULL DEFAULT 0,
        window_start_ms BIGINT NOT NULL DEFAULT 0,
        window_count BIGINT NOT NULL DEFAULT 0,
        unreleased BIGINT NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX jobs_by_organisation ON jobs (organisation_id, id)",
    "CREATE INDEX jobs_by_status ON jobs (status, unreleased)",
    """CREATE TABLE job_targets (
        job_id BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        device_id BIGINT NOT NULL,
        PRIMARY KEY (job_id, seq)
    )""",
    """CREATE TABLE job_executions (
        id BIGINT PRIMARY KEY,
        job_id BIGINT NOT NULL,
        device_id BIGINT NOT NULL,
        organisation_id BIGINT NOT NULL,
        attempt INTEGER NOT NULL,
        latest INTEGER NOT NULL,
        status TEXT NOT NULL,
        version BIGINT NOT NULL,
        timeout_seconds BIGINT NOT NULL,
        queued_ms BIGINT NOT NULL,
        started_ms BIGINT,
        updated_ms BIGINT,
        finished_ms BIGINT,
        deadline_ms BIGINT,
        exit_code BIGINT,
        stdout TEXT,
        stderr TEXT,
        status_details TEXT,
        reason TEXT,
        UNIQUE (job_id, device_id, attempt)
    )""",
    "CREATE INDEX job_executions_by_device ON job_executions (device_id, status, queued_ms)",
    "CREATE INDEX job_executions_by_job ON job_executions (job_id, latest, status)",
    "CREATE INDEX job_executions_by_deadline ON job_executions (status, deadline_ms)",
    "CREATE UNIQUE INDEX job_executions_one_running ON job_executions (device_id) "
    "WHERE status = 'IN_PROGRESS'",
)


_V101 = ("CREATE INDEX job_executions_by_status ON job_executions (status, id)",)


MIGRATIONS: tuple[tuple[int, str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        100,
        "jobs: provisioning keys, device groups, templates, jobs, targets, executions",
        _V100,
        _V100,
    ),
    (
        101,
        "jobs: executions by status and id (long-polls hear of work queued by another process)",
        _V101,
        _V101,
    ),
)
