"""API request bodies, parsed and checked into typed values (pure).

Every rejection is a ``BadRequest`` (400) whose message names the field and what it
must be, so an operator can fix a call without reading code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleetcloud.core import jsonish
from fleetcloud.core.errors import BadRequest
from fleetcloud.core.jsonish import to_id
from fleetcloud.jobs.model import AbortCriterion, RetryCriterion
from fleetcloud.jobs.rollout import ABORT_TYPES, MAX_RETRIES, RETRY_TYPES
from fleetcloud.jobs.states import ExecutionStatus, parse_status

TARGET_TYPES = ("device", "group", "all")
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_PER_MINUTE = 1000
MAX_TARGETS = 100_000
MAX_OUTPUT_CHARS = 64 * 1024
MAX_DETAILS_BYTES = 8 * 1024
MAX_NAME = 128
EXECUTE_KEYS = {
    "job_name",
    "description",
    "template_id",
    "parameters",
    "job_document",
    "target_type",
    "target_devices",
    "target_groups",
    "timeout_seconds",
    "maximum_per_minute",
    "abort_criteria",
    "retries",
}


@dataclass(frozen=True, slots=True)
class ExecuteRequest:
    job_name: str
    target_type: str
    targets: tuple[str, ...]
    description: str = ""
    template: int | str | None = None
    parameters: Any = None
    document: Any = None
    timeout_seconds: int | None = None
    maximum_per_minute: int | None = None
    abort_criteria: tuple[AbortCriterion, ...] = ()
    retries: tuple[RetryCriterion, ...] = ()


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    status: ExecutionStatus
    expected_version: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    """Only what the device sent, of: exit_code, stdout, stderr, status_details."""


@dataclass(frozen=True, slots=True)
class TemplateInput:
    name: str
    description: str
    document: Any
    parameters: Any
    timeout_seconds: int | None


# ---------------------------------------------------------------- small checks


def name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise BadRequest(f"{what} must be a non-empty string of at most {MAX_NAME} characters")
    return value.strip()


def label(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 1000:
        raise BadRequest(f"{what} must be a string of at most 1000 characters")
    return value


def whole(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{what} must be a whole number from {low} to {high}, not {value!r}")
    return value


def optional_whole(value: Any, what: str, low: int, high: int) -> int | None:
    return None if value is None else whole(value, what, low, high)


def flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false")
    return value


def reject_unknown(body: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"{what} has unknown field {unknown[0]!r}; see docs/jobs.md")


def ids(value: Any, what: str) -> list[int]:
    if not isinstance(value, list):
        raise BadRequest(f"{what} must be a list of ids")
    return list(dict.fromkeys(to_id(item, what) for item in value))


# ---------------------------------------------------------------- execute


def parse_execute(body: dict[str, Any]) -> ExecuteRequest:
    reject_unknown(body, EXECUTE_KEYS, "the execute request")
    template, document = body.get("template_id"), body.get("job_document")
    if (template is None) == (document is None):
        raise BadRequest("give either template_id (with parameters) or job_document")
    if document is not None and body.get("parameters") is not None:
        raise BadRequest("parameters apply only to a template_id")
    if template is not None and (isinstance(template, bool) or not isinstance(template, int | str)):
        raise BadRequest("template_id must be a template's id or a built-in template's name")
    target_type = body.get("target_type")
    if target_type not in TARGET_TYPES:
        raise BadRequest(f"target_type must be device, group or all, not {target_type!r}")
    return ExecuteRequest(
        job_name=name(body.get("job_name"), "job_name"),
        description=label(body.get("description"), "description"),
        target_type=target_type,
        targets=parse_targets(body, target_type),
        template=template,
        parameters=body.get("parameters"),
        document=document,
        timeout_seconds=optional_whole(
            body.get("timeout_seconds"), "timeout_seconds", 1, MAX_TIMEOUT_SECONDS
        ),
        maximum_per_minute=optional_whole(
            body.get("maximum_per_minute"), "maximum_per_minute", 1, MAX_PER_MINUTE
        ),
        abort_criteria=parse_abort(body.get("abort_criteria")),
        retries=parse_retries(body.get("retries")),
    )


def parse_targets(body: dict[str, Any], target_type: str) -> tuple[str, ...]:
    devices, groups = body.get("target_devices"), body.get("target_groups")
    if target_type == "all":
        if devices or groups:
            raise BadRequest("target_type all takes no target_devices or target_groups")
        return ()
    if target_type == "device":
        if groups:
            raise BadRequest("target_groups needs target_type group")
        raw = devices
    else:
        if devices and groups:
            raise BadRequest("for target_type group, list the groups in target_groups")
        raw = groups if groups is not None else devices
    what = "target_devices" if target_type == "device" else "target_groups"
    if not isinstance(raw, list) or not raw:
        raise BadRequest(f"{what} must be a non-empty list for target_type {target_type}")
    if len(raw) > MAX_TARGETS:
        raise BadRequest(f"{what} lists more than {MAX_TARGETS} targets")
    if not all(isinstance(item, str | int) and not isinstance(item, bool) for item in raw):
        raise BadRequest(f"{what} must list ids (or, for groups, names)")
    return tuple(dict.fromkeys(str(item).strip() for item in raw))


def _criteria_list(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise BadRequest(f"{what} must be a list of objects")
    if len(value) > 10:
        raise BadRequest(f"{what} takes at most 10 criteria")
    return value


def _failure_type(item: dict[str, Any], allowed: dict[str, Any], what: str) -> str:
    kind = item.get("failure_type")
    if kind not in allowed:
        raise BadRequest(f"{what}.failure_type must be one of {', '.join(allowed)}, not {kind!r}")
    return str(kind)


def parse_abort(value: Any) -> tuple[AbortCriterion, ...]:
    result = []
    for i, item in enumerate(_criteria_list(value, "abort_criteria")):
        what = f"abort_criteria[{i}]"
        reject_unknown(item, {"failure_type", "threshold_percentage", "min_finished"}, what)
        failure_type = _failure_type(item, ABORT_TYPES, what)
        threshold = item.get("threshold_percentage")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise BadRequest(f"{what}.threshold_percentage must be a number from 0 to 100")
        if not 0 <= threshold <= 100:
            raise BadRequest(f"{what}.threshold_percentage must be from 0 to 100")
        result.append(
            AbortCriterion(
                failure_type,
                float(threshold),
                whole(item.get("min_finished", 1), f"{what}.min_finished", 1, MAX_TARGETS),
            )
        )
    return tuple(result)


def parse_retries(value: Any) -> tuple[RetryCriterion, ...]:
    result = []
    for i, item in enumerate(_criteria_list(value, "retries")):
        what = f"retries[{i}]"
        reject_unknown(item, {"failure_type", "number_of_retries"}, what)
        failure_type = _failure_type(item, RETRY_TYPES, what)
        count = whole(item.get("number_of_retries"), f"{what}.number_of_retries", 0, MAX_RETRIES)
        result.append(RetryCriterion(failure_type, count))
    return tuple(result)


# ---------------------------------------------------------------- device status updates


def parse_status_update(body: dict[str, Any]) -> StatusUpdate:
    """A device's ``PATCH …/status``. Unknown fields are ignored (devices in the field
    may be newer than the server)."""
    if "status" not in body:
        raise BadRequest("status is missing: IN_PROGRESS, SUCCEEDED, FAILED or REJECTED")
    fields: dict[str, Any] = {}
    if "exit_code" in body:
        fields["exit_code"] = _exit_code(body["exit_code"])
    for stream in ("stdout", "stderr"):
        if stream in body:
            fields[stream] = _output(body[stream], stream)
    if "status_details" in body:
        fields["status_details"] = _details(body["status_details"])
    expected = body.get("expected_version")
    return StatusUpdate(
        status=parse_status(body["status"]),
        expected_version=optional_whole(expected, "expected_version", 1, 2**62),
        fields=fields,
    )


def _exit_code(value: Any) -> int | None:
    if value is None:
        return None
    return whole(value, "exit_code", -(2**31), 2**32 - 1)


def _output(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    return value[-MAX_OUTPUT_CHARS:]  # the end of the output is what explains a failure


def _details(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("status_details must be a JSON object")
    if len(jsonish.dumps(value)) > MAX_DETAILS_BYTES:
        raise BadRequest(f"status_details is larger than {MAX_DETAILS_BYTES} bytes")
    return value


# ---------------------------------------------------------------- templates, groups, keys


def parse_template(body: dict[str, Any]) -> TemplateInput:
    reject_unknown(
        body, {"name", "description", "job_document", "parameters", "timeout_seconds"}, "template"
    )
    template_name = name(body.get("name"), "name")
    if template_name.isascii() and template_name.isdigit():
        raise BadRequest("a template name cannot be all digits (those are ids)")
    if body.get("job_document") is None:
        raise BadRequest("job_document is missing")
    return TemplateInput(
        name=template_name,
        description=label(body.get("description"), "description"),
        document=body["job_document"],
        parameters=body.get("parameters"),
        timeout_seconds=optional_whole(
            body.get("timeout_seconds"), "timeout_seconds", 1, MAX_TIMEOUT_SECONDS
        ),
    )


def parse_group(body: dict[str, Any]) -> tuple[str, str, list[int]]:
    reject_unknown(body, {"name", "description", "devices"}, "group")
    group_name = name(body.get("name"), "name")
    if group_name.isascii() and group_name.isdigit():
        raise BadRequest("a group name cannot be all digits (those are ids)")
    devices = ids(body.get("devices", []), "devices")
    return group_name, label(body.get("description"), "description"), devices


def parse_key_request(body: dict[str, Any]) -> tuple[str, int | None, int | None]:
    reject_unknown(body, {"label", "expires_in_seconds", "max_uses"}, "provisioning key")
    expires = optional_whole(
        body.get("expires_in_seconds"), "expires_in_seconds", 1, 10 * 365 * 86400
    )
    max_uses = optional_whole(body.get("max_uses"), "max_uses", 1, 10_000_000)
    return label(body.get("label"), "label"), expires, max_uses
