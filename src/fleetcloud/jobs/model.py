"""The jobs feature's records and their JSON shapes (pure).

Ids are 64-bit integers, written as strings in JSON like everywhere in the API; times
are Unix milliseconds (``*_at``). A device's ``uuid`` is its agent id as a string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleetcloud.jobs.states import ALL_STATUSES, ExecutionStatus, JobStatus


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    """One template parameter, in AWS's shape (``key``, ``regex``, ``optional``…)."""

    key: str
    description: str = ""
    regex: str | None = None
    optional: bool = False
    default: str | None = None
    example: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": self.key, "description": self.description}
        body["optional"] = self.optional
        for name in ("regex", "default", "example"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        return body


@dataclass(frozen=True, slots=True)
class Template:
    id: int
    name: str
    description: str
    document: dict[str, Any]
    parameters: tuple[ParameterSpec, ...] = ()
    timeout_seconds: int | None = None
    organisation_id: int | None = None  # None: built in, shared by every organisation
    created_ms: int = 0
    updated_ms: int = 0

    @property
    def builtin(self) -> bool:
        return self.organisation_id is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "description": self.description,
            "job_document": self.document,
            "parameters": [p.to_json() for p in self.parameters],
            "timeout_seconds": self.timeout_seconds,
            "builtin": self.builtin,
            "created_at": self.created_ms or None,
            "updated_at": self.updated_ms or None,
        }


@dataclass(frozen=True, slots=True)
class Group:
    id: int
    organisation_id: int
    name: str
    description: str
    created_ms: int
    devices: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "description": self.description,
            "created_at": self.created_ms,
            "devices": [str(d) for d in self.devices],
            "device_count": len(self.devices),
        }


@dataclass(frozen=True, slots=True)
class Device:
    agent_id: int
    organisation_id: int
    name: str
    created_ms: int
    groups: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": str(self.agent_id),
            "agent_id": str(self.agent_id),
            "name": self.name,
            "organisation_id": str(self.organisation_id),
            "created_at": self.created_ms,
            "groups": [str(g) for g in self.groups],
        }


@dataclass(frozen=True, slots=True)
class ProvisioningKey:
    id: int
    organisation_id: int
    label: str
    created_ms: int
    expires_ms: int | None
    max_uses: int | None
    uses: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "organisation_id": str(self.organisation_id),
            "label": self.label,
            "created_at": self.created_ms,
            "expires_at": self.expires_ms,
            "max_uses": self.max_uses,
            "uses": self.uses,
        }


@dataclass(frozen=True, slots=True)
class AbortCriterion:
    """Abort the job when more than ``threshold_percentage`` % of at least ``min_finished``
    finished executions ended in ``failure_type`` (FAILED, REJECTED, TIMED_OUT or ALL)."""

    failure_type: str
    threshold_percentage: float
    min_finished: int

    def to_json(self) -> dict[str, Any]:
        return {
            "failure_type": self.failure_type,
            "threshold_percentage": self.threshold_percentage,
            "min_finished": self.min_finished,
        }


@dataclass(frozen=True, slots=True)
class RetryCriterion:
    """Queue a new attempt, up to ``number_of_retries`` times, when an execution ends in
    ``failure_type`` (FAILED, TIMED_OUT or ALL)."""

    failure_type: str
    number_of_retries: int

    def to_json(self) -> dict[str, Any]:
        return {"failure_type": self.failure_type, "number_of_retries": self.number_of_retries}


@dataclass(slots=True)
class Job:
    id: int
    organisation_id: int
    name: str
    description: str
    status: JobStatus
    target_type: str
    targets: list[str]
    document: dict[str, Any]
    timeout_seconds: int
    template_id: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    maximum_per_minute: int | None = None
    abort_criteria: tuple[AbortCriterion, ...] = ()
    retries: tuple[RetryCriterion, ...] = ()
    created_by: int = 0
    created_ms: int = 0
    updated_ms: int = 0
    completed_ms: int | None = None
    reason: str | None = None
    force_canceled: bool = False
    window_start_ms: int = 0
    window_count: int = 0
    unreleased: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        counts = {status.value: self.counts.get(status.value, 0) for status in ALL_STATUSES}
        counts["pending_rollout"] = self.unreleased
        counts["total"] = sum(self.counts.get(s.value, 0) for s in ALL_STATUSES) + self.unreleased
        return {
            "job_id": str(self.id),
            "job_name": self.name,
            "description": self.description,
            "status": self.status.value,
            "reason": self.reason,
            "force_canceled": self.force_canceled,
            "target_type": self.target_type,
            "targets": self.targets,
            "template_id": None if self.template_id is None else str(self.template_id),
            "parameters": self.parameters,
            "job_document": self.document,
            "timeout_seconds": self.timeout_seconds,
            "maximum_per_minute": self.maximum_per_minute,
            "abort_criteria": [c.to_json() for c in self.abort_criteria],
            "retries": [c.to_json() for c in self.retries],
            "created_by": str(self.created_by),
            "created_at": self.created_ms,
            "updated_at": self.updated_ms,
            "completed_at": self.completed_ms,
            "counts": counts,
        }


@dataclass(slots=True)
class Execution:
    id: int
    job_id: int
    device_id: int
    organisation_id: int
    attempt: int
    latest: bool
    status: ExecutionStatus
    version: int
    timeout_seconds: int
    queued_ms: int
    started_ms: int | None = None
    updated_ms: int | None = None
    finished_ms: int | None = None
    deadline_ms: int | None = None
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    status_details: dict[str, Any] | None = None
    reason: str | None = None
    job_name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "execution_id": str(self.id),
            "job_id": str(self.job_id),
            "job_name": self.job_name,
            "device_uuid": str(self.device_id),
            "execution_number": self.attempt,
            "status": self.status.value,
            "version": self.version,
            "timeout_seconds": self.timeout_seconds,
            "queued_at": self.queued_ms,
            "started_at": self.started_ms,
            "updated_at": self.updated_ms,
            "finished_at": self.finished_ms,
            "deadline_at": self.deadline_ms,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "status_details": self.status_details,
            "reason": self.reason,
        }

    def summary(self) -> dict[str, Any]:
        """What the device's ``jobs`` channel gets on every change (no output)."""
        return {
            "job_id": str(self.job_id),
            "job_name": self.job_name,
            "execution_number": self.attempt,
            "status": self.status.value,
            "version": self.version,
            "exit_code": self.exit_code,
            "reason": self.reason,
        }


def next_job_json(execution: Execution, document: dict[str, Any]) -> dict[str, Any]:
    """The answer to a device's ``GET /devices/{uuid}/jobs/next`` (the seed's shape)."""
    return {
        "job_id": str(execution.job_id),
        "job_name": execution.job_name,
        "timeout_seconds": execution.timeout_seconds,
        "job_document": document,
        "version": execution.version,
        "execution_number": execution.attempt,
        "status": execution.status.value,
        "started_at": execution.started_ms,
        "deadline_at": execution.deadline_ms,
    }


NO_PENDING_JOBS = {"message": "No pending jobs"}


def id_in(text: str) -> int | None:
    """``text`` as a 64-bit id (ASCII digits, 1 … 2**63-1), or None."""
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if 0 < value < 2**63 else None
