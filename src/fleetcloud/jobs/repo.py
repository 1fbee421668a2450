"""Store work for job templates, jobs and their executions.

Every execution change is one conditional ``UPDATE … WHERE id = ? AND version = ?``, so
two writers (two polls, a device and the timeout sweep, two server processes) never both
win; the loser sees the change and answers 409 or moves on. Starting executions (the
claim of ``jobs/next``) is one ``UPDATE`` too, conditional on the row still being QUEUED
and the device having none IN_PROGRESS, for any number of devices at once. The same unit
publishes the new state to the device's ``jobs`` channel, queues a retry, applies abort
criteria and rolls the job up — all or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetcloud.core import jsonish
from fleetcloud.core.errors import Conflict, Forbidden, NotFound
from fleetcloud.core.ids import new_id
from fleetcloud.jobs.model import (
    AbortCriterion,
    Execution,
    Job,
    ParameterSpec,
    RetryCriterion,
    Template,
    id_in,
)
from fleetcloud.jobs.requests import StatusUpdate, TemplateInput
from fleetcloud.jobs.rollout import abort_reason, release_allowance, should_retry
from fleetcloud.jobs.states import (
    Actor,
    ExecutionStatus,
    JobStatus,
    check_transition,
    is_terminal,
)
from fleetcloud.jobs.templates import BUILTIN_BY_ID, BUILTIN_BY_NAME, BUILTINS
from fleetcloud.store import agents
from fleetcloud.store.channels import PublishItem, publish
from fleetcloud.store.ops import Execute, ExecuteMany, Fetch, Work, placeholders

S = ExecutionStatus
JOBS_CHANNEL = "jobs"
JOB_COLUMNS = (
    "id, organisation_id, name, description, status, target_type, targets, template_id, "
    "parameters, document, timeout_seconds, maximum_per_minute, abort_criteria, retries, "
    "created_by, created_ms, updated_ms, completed_ms, reason, force_canceled, "
    "window_start_ms, window_count, unreleased"
)
EXECUTION_FIELDS = (
    "id, job_id, device_id, organisation_id, attempt, latest, status, version, "
    "timeout_seconds, queued_ms, started_ms, updated_ms, finished_ms, deadline_ms, "
    "exit_code, stdout, stderr, status_details, reason"
)
EXECUTION_COLUMNS = ", ".join(f"e.{name}" for name in EXECUTION_FIELDS.split(", ")) + ", j.name"
EXECUTIONS = f"SELECT {EXECUTION_COLUMNS} FROM job_executions e JOIN jobs j ON j.id = e.job_id"  # noqa: S608 - constant columns
TEMPLATE_COLUMNS = (
    "id, organisation_id, name, description, document, parameters, timeout_seconds, "
    "created_ms, updated_ms"
)
MOVABLE = {
    "status",
    "version",
    "updated_ms",
    "started_ms",
    "deadline_ms",
    "finished_ms",
    "exit_code",
    "stdout",
    "stderr",
    "status_details",
    "reason",
}
OUTPUT_FIELDS = ("exit_code", "stdout", "stderr", "status_details")


@dataclass(slots=True)
class Outcome:
    """What a change did: the execution as it is now, and devices with new work."""

    execution: Execution | None = None
    woken: list[int] = field(default_factory=list)
    count: int = 0


# ---------------------------------------------------------------- rows


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _template(row: Sequence[Any]) -> Template:
    specs = tuple(ParameterSpec(**spec) for spec in jsonish.loads(row[5]))
    return Template(
        id=int(row[0]),
        organisation_id=int(row[1]),
        name=str(row[2]),
        description=str(row[3]),
        document=jsonish.loads(row[4]),
        parameters=specs,
        timeout_seconds=_int(row[6]),
        created_ms=int(row[7]),
        updated_ms=int(row[8]),
    )


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=int(row[0]),
        organisation_id=int(row[1]),
        name=str(row[2]),
        description=str(row[3]),
        status=JobStatus(row[4]),
        target_type=str(row[5]),
        targets=jsonish.loads(row[6]),
        template_id=_int(row[7]),
        parameters=jsonish.loads(row[8]),
        document=jsonish.loads(row[9]),
        timeout_seconds=int(row[10]),
        maximum_per_minute=_int(row[11]),
        abort_criteria=tuple(AbortCriterion(**c) for c in jsonish.loads(row[12])),
        retries=tuple(RetryCriterion(**c) for c in jsonish.loads(row[13])),
        created_by=int(row[14]),
        created_ms=int(row[15]),
        updated_ms=int(row[16]),
        completed_ms=_int(row[17]),
        reason=row[18],
        force_canceled=bool(row[19]),
        window_start_ms=int(row[20]),
        window_count=int(row[21]),
        unreleased=int(row[22]),
    )


def _execution(row: Sequence[Any]) -> Execution:
    return Execution(
        id=int(row[0]),
        job_id=int(row[1]),
        device_id=int(row[2]),
        organisation_id=int(row[3]),
        attempt=int(row[4]),
        latest=bool(row[5]),
        status=ExecutionStatus(row[6]),
        version=int(row[7]),
        timeout_seconds=int(row[8]),
        queued_ms=int(row[9]),
        started_ms=_int(row[10]),
        updated_ms=_int(row[11]),
        finished_ms=_int(row[12]),
        deadline_ms=_int(row[13]),
        exit_code=_int(row[14]),
        stdout=row[15],
        stderr=row[16],
        status_details=jsonish.loads_or_none(row[17]),
        reason=row[18],
        job_name=str(row[19]),
    )


# ---------------------------------------------------------------- templates


def list_templates(organisation_id: int) -> Work[list[Template]]:
    rows = yield Fetch(
        f"SELECT {TEMPLATE_COLUMNS} FROM job_templates WHERE organisation_id = ? ORDER BY name",  # noqa: S608 - constant columns
        (organisation_id,),
    )
    return [*BUILTINS, *(_template(row) for row in rows)]


def find_template(organisation_id: int, ref: int | str) -> Work[Template]:
    """A template by id or name: a built-in one, or the organisation's own."""
    text = str(ref).strip()
    as_id = id_in(text)
    builtin = BUILTIN_BY_NAME.get(text) or BUILTIN_BY_ID.get(as_id or 0)
    if builtin is not None:
        return builtin
    column = "name" if as_id is None else "id"
    rows = yield Fetch(
        f"SELECT {TEMPLATE_COLUMNS} FROM job_templates "  # noqa: S608 - constant columns
        f"WHERE organisation_id = ? AND {column} = ?",
        (organisation_id, text if as_id is None else as_id),
    )
    if not rows:
        raise NotFound(f"template {text!r} does not exist")
    return _template(rows[0])


def _check_name(organisation_id: int, name: str, template_id: int) -> Work[None]:
    if name in BUILTIN_BY_NAME:
        raise Conflict(f"{name!r} is the name of a built-in template; choose another")
    rows = yield Fetch(
        "SELECT id FROM job_templates WHERE organisation_id = ? AND name = ? AND id <> ?",
        (organisation_id, name, template_id),
    )
    if rows:
        raise Conflict(f"a template named {name!r} already exists")


def save_template(
    organisation_id: int,
    data: TemplateInput,
    specs: Sequence[ParameterSpec],
    now: int,
    template_id: int | None = None,
) -> Work[Template]:
    """Create a template, or replace the one with ``template_id``."""
    if template_id is not None:
        existing = yield from find_template(organisation_id, template_id)
        if existing.builtin:
            raise Forbidden("built-in templates cannot be changed; create your own instead")
    yield from _check_name(organisation_id, data.name, template_id or 0)
    document = jsonish.dumps_str(data.document)
    parameters = jsonish.dumps_str([spec.to_json() for spec in specs])
    if template_id is None:
        template_id = new_id()
        yield Execute(
            f"INSERT INTO job_templates ({TEMPLATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
            (
                template_id,
                organisation_id,
                data.name,
                data.description,
                document,
                parameters,
                data.timeout_seconds,
                now,
                now,
            ),
        )
    else:
        yield Execute(
            "UPDATE job_templates SET name = ?, description = ?, document = ?, parameters = ?, "
            "timeout_seconds = ?, updated_ms = ? WHERE id = ?",
            (
                data.name,
                data.description,
                document,
                parameters,
                data.timeout_seconds,
                now,
                template_id,
            ),
        )
    template = yield from find_template(organisation_id, template_id)
    return template


def delete_template(organisation_id: int, template_id: int) -> Work[None]:
    existing = yield from find_template(organisation_id, template_id)
    if existing.builtin:
        raise Forbidden("built-in templates cannot be deleted")
    yield Execute("DELETE FROM job_templates WHERE id = ?", (existing.id,))


# ---------------------------------------------------------------- jobs


def create_job(job: Job, devices: Sequence[int], now: int) -> Work[tuple[Job, list[int]]]:
    """Store ``job`` with its targets and queue the first executions (all of them,
    unless a rollout rate holds some back). Returns the job and the devices queued.

    Without a rollout rate every target is queued at once, so none is written to
    ``job_targets`` only to be read back and deleted in the same transaction."""
    held = job.maximum_per_minute is not None
    criteria = [c.to_json() for c in job.abort_criteria]
    retries = [c.to_json() for c in job.retries]
    yield Execute(
        f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({placeholders(23)})",  # noqa: S608 - constant columns
        (
            job.id,
            job.organisation_id,
            job.name,
            job.description,
            job.status.value,
            job.target_type,
            jsonish.dumps_str(job.targets),
            job.template_id,
            jsonish.dumps_str(job.parameters),
            jsonish.dumps_str(job.document),
            job.timeout_seconds,
            job.maximum_per_minute,
            jsonish.dumps_str(criteria),
            jsonish.dumps_str(retries),
            job.created_by,
            now,  # created_ms
            now,  # updated_ms
            None,  # completed_ms
            None,  # reason
            0,  # force_canceled
            0,  # window_start_ms
            0 if held else len(devices),  # window_count
            len(devices) if held else 0,  # unreleased
        ),
    )
    if held:
        yield ExecuteMany(
            "INSERT INTO job_targets (job_id, seq, device_id) VALUES (?, ?, ?)",
            [(job.id, seq, device) for seq, device in enumerate(devices)],
        )
        queued = yield from release(job.id, now)
    else:
        queued = list(devices)
        yield from _queue(job, queued, 1, now)
    created = yield from require_job(job.organisation_id, job.id)
    return created, queued


def _load_job(job_id: int) -> Work[Job | None]:
    rows = yield Fetch(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))  # noqa: S608 - constant columns
    return _job(rows[0]) if rows else None


def _counts(job_ids: Sequence[int]) -> Work[dict[int, dict[str, int]]]:
    counts: dict[int, dict[str, int]] = {job_id: {} for job_id in job_ids}
    if not job_ids:
        return counts
    rows = yield Fetch(
        "SELECT job_id, status, count(*) FROM job_executions "  # noqa: S608 - placeholders only
        f"WHERE latest = 1 AND job_id IN ({placeholders(len(job_ids))}) GROUP BY job_id, status",
        tuple(job_ids),
    )
    for job_id, status, count in rows:
        counts[int(job_id)][str(status)] = int(count)
    return counts


def require_job(organisation_id: int, job_id: int) -> Work[Job]:
    job = yield from _load_job(job_id)
    if job is None or job.organisation_id != organisation_id:
        raise NotFound(f"job {job_id} does not exist")
    job.counts = (yield from _counts([job.id]))[job.id]
    return job


def list_jobs(
    organisation_id: int, status: JobStatus | None, limit: int, before: int | None
) -> Work[list[Job]]:
    where, params = ["organisation_id = ?"], [organisation_id]
    if status is not None:
        where.append("status = ?")
        params.append(status.value)  # type: ignore[arg-type]
    if before is not None:
        where.append("id < ?")
        params.append(before)
    rows = yield Fetch(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",  # noqa: S608 - constant fragments
        (*params, limit),
    )
    jobs = [_job(row) for row in rows]
    counts = yield from _counts([job.id for job in jobs])
    for job in jobs:
        job.counts = counts[job.id]
    return jobs


def release(job_id: int, now: int) -> Work[list[int]]:
    """Queue the next targets of a job, as many as its rollout rate allows now."""
    job = yield from _load_job(job_id)
    if job is None or job.status is not JobStatus.IN_PROGRESS or not job.unreleased:
        return []
    start, count, allowed = release_allowance(
        now, job.window_start_ms, job.window_count, job.maximum_per_minute
    )
    limit = job.unreleased if allowed is None else min(allowed, job.unreleased)
    rows = []
    if limit > 0:
        rows = yield Fetch(
            "SELECT seq, device_id FROM job_targets WHERE job_id = ? ORDER BY seq LIMIT ?",
            (job.id, limit),
        )
    if rows:
        taken = yield Execute(
            "DELETE FROM job_targets WHERE job_id = ? AND seq <= ?", (job.id, rows[-1][0])
        )
        if taken != len(rows):
            raise Conflict(f"job {job.id} was rolled out by another writer at the same time")
    devices = [int(row[1]) for row in rows]
    yield Execute(
        "UPDATE jobs SET window_start_ms = ?, window_count = ?, unreleased = unreleased - ?, "
        "updated_ms = ? WHERE id = ?",
        (start, count + len(devices), len(devices), now, job.id),
    )
    yield from _queue(job, devices, 1, now)
    return devices


def due_rollouts(now: int) -> Work[list[int]]:
    """Jobs with targets still held back whose rollout window has passed."""
    rows = yield Fetch(
        "SELECT id FROM jobs WHERE status = ? AND unreleased > 0 AND window_start_ms <= ? "
        "ORDER BY id",
        (JobStatus.IN_PROGRESS.value, now - 60_000),
    )
    return [int(row[0]) for row in rows]


def _queue(job: Job, devices: Sequence[int], attempt: int, now: int) -> Work[None]:
    if not devices:
        return
    queued = [
        Execution(
            id=new_id(),
            job_id=job.id,
            device_id=device,
            organisation_id=job.organisation_id,
            attempt=attempt,
            latest=True,
            status=S.QUEUED,
            version=1,
            timeout_seconds=job.timeout_seconds,
            queued_ms=now,
            updated_ms=now,
            job_name=job.name,
        )
        for device in devices
    ]
    yield ExecuteMany(
        "INSERT INTO job_executions (id, job_id, device_id, organisation_id, attempt, latest, "
        "status, version, timeout_seconds, queued_ms, updated_ms) "
        "VALUES (?, ?, ?, ?, ?, 1, ?, 1, ?, ?, ?)",
        [
            (
                e.id,
                e.job_id,
                e.device_id,
                e.organisation_id,
                e.attempt,
                e.status.value,
                e.timeout_seconds,
                e.queued_ms,
                e.updated_ms,
            )
            for e in queued
        ],
    )
    yield from _announce(queued, None)


def _refresh(job_id: int, now: int) -> Work[None]:
    """Mark the job COMPLETED once nothing is queued, running or held back."""
    yield Execute(
        "UPDATE jobs SET status = ?, completed_ms = ?, updated_ms = ? "
        "WHERE id = ? AND status = ? AND unreleased = 0 AND NOT EXISTS ("
        "SELECT 1 FROM job_executions WHERE job_id = ? AND latest = 1 AND status IN (?, ?))",
        (
            JobStatus.COMPLETED.value,
            now,
            now,
            job_id,
            JobStatus.IN_PROGRESS.value,
            job_id,
            S.QUEUED.value,
            S.IN_PROGRESS.value,
        ),
    )


def cancel_job(
    organisation_id: int, job_id: int, force: bool, reason: str, now: int, author: int
) -> Work[Job]:
    job = yield from require_job(organisation_id, job_id)
    if job.status is JobStatus.COMPLETED:
        raise Conflict(f"job {job_id} is already COMPLETED; there is nothing to cancel")
    if job.status is JobStatus.IN_PROGRESS or (force and not job.force_canceled):
        yield from _cancel(job, force, reason, now, author)
    canceled = yield from require_job(organisation_id, job_id)
    return canceled


def _cancel(job: Job, force: bool, reason: str, now: int, author: int | None) -> Work[None]:
    yield Execute(
        "UPDATE jobs SET status = ?, reason = ?, force_canceled = ?, unreleased = 0, "
        "updated_ms = ?, completed_ms = ? WHERE id = ?",
        (JobStatus.CANCELED.value, reason, int(force), now, now, job.id),
    )
    yield Execute("DELETE FROM job_targets WHERE job_id = ?", (job.id,))
    statuses = [S.QUEUED.value, S.IN_PROGRESS.value] if force else [S.QUEUED.value]
    rows = yield Fetch(
        f"{EXECUTIONS} WHERE e.job_id = ? AND e.latest = 1 "
        f"AND e.status IN ({placeholders(len(statuses))})",
        (job.id, *statuses),
    )
    moved = []
    for row in rows:
        execution = yield from _move(
            _execution(row),
            S.CANCELED,
            now,
            reason=f"the job was canceled ({reason})",
            strict=False,
        )
        if execution is not None:
            moved.append(execution)
    yield from _announce(moved, author)


# ---------------------------------------------------------------- executions


def latest_execution(organisation_id: int, device_id: int, job_id: int) -> Work[Execution]:
    rows = yield Fetch(
        f"{EXECUTIONS} WHERE e.job_id = ? AND e.device_id = ? AND e.organisation_id = ? "
        "AND e.latest = 1",
        (job_id, device_id, organisation_id),
    )
    if not rows:
        raise NotFound(f"job {job_id} has no execution for device {device_id}")
    return _execution(rows[0])


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    organisation_id: int
    job_id: int | None = None
    device_id: int | None = None
    status: ExecutionStatus | None = None
    latest_only: bool = False
    before: int | None = None
    limit: int = 100


def list_executions(query: ExecutionFilter) -> Work[list[Execution]]:
    where, params = ["e.organisation_id = ?"], [query.organisation_id]
    for clause, value in (
        ("e.job_id = ?", query.job_id),
        ("e.device_id = ?", query.device_id),
        ("e.status = ?", None if query.status is None else query.status.value),
        ("e.id < ?", query.before),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)  # type: ignore[arg-type]
    if query.latest_only:
        where.append("e.latest = 1")
    rows = yield Fetch(
        f"{EXECUTIONS} WHERE {' AND '.join(where)} ORDER BY e.id DESC LIMIT ?",
        (*params, query.limit),
    )
    return [_execution(row) for row in rows]


def has_pending(device_id: int) -> Work[bool]:
    """Whether ``claim_next`` would find something (a cheap read before a write)."""
    rows = yield Fetch(
        "SELECT status FROM job_executions WHERE device_id = ? AND status IN (?, ?) LIMIT 2",
        (device_id, S.QUEUED.value, S.IN_PROGRESS.value),
    )
    statuses = {row[0] for row in rows}
    return S.QUEUED.value in statuses and S.IN_PROGRESS.value not in statuses


def queued_since(floor: int) -> Work[list[tuple[int, int]]]:
    """``(execution id, device id)`` of the QUEUED executions with ids above ``floor``
    (ids grow with time, so: made since then), for waking parked long-polls."""
    rows = yield Fetch(
        "SELECT id, device_id FROM job_executions WHERE status = ? AND id > ?",
        (S.QUEUED.value, floor),
    )
    return [(int(row[0]), int(row[1])) for row in rows]


def running(device_id: int, other_than: int = 0) -> Work[Execution | None]:
    """The device's IN_PROGRESS execution (other than ``other_than``), if any."""
    rows = yield Fetch(
        f"{EXECUTIONS} WHERE e.device_id = ? AND e.status = ? AND e.id <> ?",
        (device_id, S.IN_PROGRESS.value, other_than),
    )
    return _execution(rows[0]) if rows else None


JOB_OF_ROW = (
    "(SELECT name FROM jobs WHERE jobs.id = job_executions.job_id), "
    "(SELECT document FROM jobs WHERE jobs.id = job_executions.job_id)"
)
CLAIM = (
    "UPDATE job_executions SET status = ?, version = version + 1, started_ms = ?, "  # noqa: S608 - constant columns
    "updated_ms = ?, deadline_ms = ? + timeout_seconds * 1000 "
    "WHERE status = ? AND device_id IN ({devices}) "
    "AND id = (SELECT q.id FROM job_executions q WHERE q.device_id = job_executions.device_id "
    "AND q.status = ? ORDER BY q.queued_ms, q.id LIMIT 1) "
    "AND NOT EXISTS (SELECT 1 FROM job_executions r "
    "WHERE r.device_id = job_executions.device_id AND r.status = ?) "
    f"RETURNING {EXECUTION_FIELDS}, {JOB_OF_ROW}"
)

Claimed = tuple[Execution, dict[str, Any]]


def claim_next(device_id: int, now: int) -> Work[Claimed | None]:
    """Start the device's oldest QUEUED execution (→ IN_PROGRESS), unless one is running."""
    [claimed] = yield from claim_many([device_id], now)
    return claimed


def claim_many(device_ids: Sequence[int], now: int) -> Work[list[Claimed | None]]:
    """``claim_next`` for each of ``device_ids`` (one answer each, in order; a device named
    twice gets its execution once), with one publish of the new states.

    One statement picks, checks and moves the rows, so concurrent polls — in this process
    or another — start at most one execution per device, once: the loser of a race finds
    the row no longer QUEUED (or, across processes, the partial unique index refuses a
    second IN_PROGRESS execution for the device, and the whole unit fails).
    """
    queued, in_progress = S.QUEUED.value, S.IN_PROGRESS.value
    wanted = list(dict.fromkeys(device_ids))
    rows = yield Fetch(
        CLAIM.format(devices=placeholders(len(wanted))),
        (in_progress, now, now, now, queued, *wanted, queued, in_progress),
    )
    documents: dict[int, dict[str, Any]] = {}  # parsed once per job
    started: dict[int, Claimed] = {}
    for *fields, name, document in rows:
        execution = _execution((*fields, name))
        if execution.job_id not in documents:
            documents[execution.job_id] = jsonish.loads(document)
        started[execution.device_id] = (execution, documents[execution.job_id])
    if started:
        yield from publish(
            [
                PublishItem(device, JOBS_CHANNEL, execution.summary(), device)
                for device, (execution, _) in started.items()
            ]
        )
    return [started.pop(device, None) for device in device_ids]


def update_status(
    organisation_id: int, device_id: int, job_id: int, update: StatusUpdate, author: int, now: int
) -> Work[Outcome]:
    """A device reports on its execution of ``job_id`` (its latest attempt)."""
    execution = yield from latest_execution(organisation_id, device_id, job_id)
    if update.status is execution.status and is_terminal(execution.status):
        repeated = yield from _repeat_final(execution, update, now)
        return Outcome(repeated)
    if update.expected_version is not None and update.expected_version != execution.version:
        raise Conflict(
            f"expected version {update.expected_version}, but the execution is at version "
            f"{execution.version} ({execution.status}); read it again"
        )
    actor = _device_actor(execution, update.status, now)
    _check_device_move(execution, update.status, actor)
    if update.status is S.IN_PROGRESS and execution.status is S.QUEUED:
        busy = yield from running(device_id, execution.id)
        if busy is not None:
            raise Conflict(f"the device is already running job {busy.job_id}; finish it first")
    moved = yield from _move(execution, update.status, now, fields=update.fields)
    assert moved is not None
    yield from _announce([moved], author)
    woken = (yield from _after_end(moved, now)) if is_terminal(moved.status) else []
    return Outcome(moved, woken)


def _device_actor(execution: Execution, target: ExecutionStatus, now: int) -> Actor:
    """A device may confirm TIMED_OUT once the server's deadline has passed (its own
    timer fired); before that, only the server times an execution out."""
    deadline = execution.deadline_ms
    if target is S.TIMED_OUT and deadline is not None and now >= deadline:
        return Actor.SERVER
    return Actor.DEVICE


def _check_device_move(execution: Execution, target: ExecutionStatus, actor: Actor) -> None:
    if is_terminal(execution.status):
        why = f": {execution.reason}" if execution.reason else ""
        raise Conflict(
            f"the execution is already {execution.status}{why}; it is final, so this update "
            f"to {target} is refused"
        )
    check_transition(execution.status, target, actor)


def _repeat_final(execution: Execution, update: StatusUpdate, now: int) -> Work[Execution]:
    """The same final status again (a retried request): fill in output not yet recorded."""
    missing = {
        key: value
        for key, value in update.fields.items()
        if value is not None and getattr(execution, key) is None
    }
    if not missing:
        return execution
    moved = yield from _move(execution, execution.status, now, fields=missing)
    assert moved is not None
    return moved


def stop_execution(
    organisation_id: int,
    device_id: int,
    job_id: int,
    target: ExecutionStatus,
    force: bool,
    author: int,
    now: int,
) -> Work[Outcome]:
    """An operator cancels (CANCELED) or removes (REMOVED) one device's execution."""
    execution = yield from latest_execution(organisation_id, device_id, job_id)
    if execution.status is S.IN_PROGRESS and not force:
        raise Conflict("the execution is IN_PROGRESS; send force: true to stop it anyway")
    if is_terminal(execution.status):
        raise Conflict(f"the execution is already {execution.status}, which is final")
    check_transition(execution.status, target, Actor.OPERATOR)
    word = "canceled" if target is S.CANCELED else "removed"
    moved = yield from _move(execution, target, now, reason=f"{word} by an operator")
    assert moved is not None
    yield from _announce([moved], author)
    yield from _after_end(moved, now)
    return Outcome(moved)


def time_out(now: int, limit: int = 200) -> Work[Outcome]:
    """Move IN_PROGRESS executions past their deadline to TIMED_OUT (the server's timer)."""
    rows = yield Fetch(
        f"{EXECUTIONS} WHERE e.status = ? AND e.deadline_ms <= ? ORDER BY e.deadline_ms LIMIT ?",
        (S.IN_PROGRESS.value, now, limit),
    )
    outcome = Outcome()
    for row in rows:
        execution = _execution(row)
        reason = f"no final status within timeout_seconds={execution.timeout_seconds}"
        moved = yield from _move(execution, S.TIMED_OUT, now, reason=reason, strict=False)
        if moved is None:
            continue
        yield from _announce([moved], None)
        outcome.woken.extend((yield from _after_end(moved, now)))
        outcome.execution = moved
        outcome.count += 1
    return outcome


def _move(
    execution: Execution,
    target: ExecutionStatus,
    now: int,
    *,
    fields: dict[str, Any] | None = None,
    reason: str | None = None,
    strict: bool = True,
) -> Work[Execution | None]:
    """Write one change, if nobody changed the row since it was read; bump the version."""
    values: dict[str, Any] = {"status": target.value, "version": execution.version + 1}
    values["updated_ms"] = now
    if target is S.IN_PROGRESS and execution.started_ms is None:
        values["started_ms"] = now
        values["deadline_ms"] = now + execution.timeout_seconds * 1000
    if is_terminal(target) and execution.finished_ms is None:
        values["finished_ms"] = now
    for key, value in (fields or {}).items():
        is_json = key == "status_details" and value is not None
        values[key] = jsonish.dumps_str(value) if is_json else value
    if reason is not None:
        values["reason"] = reason
    assert set(values) <= MOVABLE
    assignments = ", ".join(f"{column} = ?" for column in values)
    rows = yield Fetch(
        f"UPDATE job_executions SET {assignments} WHERE id = ? AND version = ? "  # noqa: S608 - whitelisted columns
        f"RETURNING {EXECUTION_FIELDS}",
        (*values.values(), execution.id, execution.version),
    )
    if not rows:
        if strict:
            raise Conflict("the execution changed at the same time; read it again and retry")
        return None
    return _execution((*rows[0], execution.job_name))


def _after_end(execution: Execution, now: int) -> Work[list[int]]:
    """After an execution ends: queue a retry, apply abort criteria, roll the job up."""
    job = yield from _load_job(execution.job_id)
    if job is None or job.status is not JobStatus.IN_PROGRESS:
        return []
    woken = []
    rows = []
    if job.retries:
        rows = yield Fetch(
            "SELECT status FROM job_executions WHERE job_id = ? AND device_id = ? ORDER BY attempt",
            (job.id, execution.device_id),
        )
    if should_retry(job.retries, [ExecutionStatus(row[0]) for row in rows]):
        yield Execute("UPDATE job_executions SET latest = 0 WHERE id = ?", (execution.id,))
        yield from _queue(job, [execution.device_id], execution.attempt + 1, now)
        woken.append(execution.device_id)
    reason = None
    if job.abort_criteria:  # counting every execution of a large job is not free
        counts = (yield from _counts([job.id]))[job.id]
        reason = abort_reason(job.abort_criteria, counts)
    if reason is not None:
        yield from _cancel(job, False, reason, now, None)
        return woken
    yield from _refresh(job.id, now)
    return woken


def _announce(executions: Sequence[Execution], author: int | None) -> Work[None]:
    """Publish each execution's new state to its device's ``jobs`` channel."""
    if not executions:
        return
    if author is None:
        organisation = yield from agents.get_organisation(executions[0].organisation_id)
        author = organisation.agent_id if organisation is not None else executions[0].device_id
    items = [PublishItem(e.device_id, JOBS_CHANNEL, e.summary(), author) for e in executions]
    yield from publish(items)
