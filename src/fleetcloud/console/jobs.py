"""The jobs pages: the organisation's jobs, a form that creates one from a template, and
each job's progress — counts per state and every device's execution with its output —
with Cancel and Force cancel.

The form is turned into the body ``POST /api/v1/jobs/execute`` takes and goes through the
same parser (``requests.parse_execute``) and the same ``JobsService.execute``, so its
rules and error messages are the API's. A job's page stays current by polling
``/jobs/{id}/progress`` (docs/console.md, "Jobs", says why a poll and not the websocket).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from fleetcloud.api.http import read_body
from fleetcloud.core.errors import ApiError, BadRequest, Forbidden, NotFound
from fleetcloud.core.ids import lowest_id_at
from fleetcloud.jobs import devices as fleet
from fleetcloud.jobs import repo, requests
from fleetcloud.jobs.model import Execution, Group, Job, Template, id_in
from fleetcloud.jobs.repo import ExecutionFilter
from fleetcloud.jobs.rollout import ABORT_TYPES, RETRY_TYPES
from fleetcloud.jobs.service import jobs_service
from fleetcloud.jobs.states import ACTIVE, ALL_STATUSES, DEVICE_SETTABLE, JobStatus
from fleetcloud.store.agents import now_ms
from fleetcloud.store.ops import Fetch, Work, placeholders

from .pages import Reader, json_response, page, render, wants_json
from .sessions import check_same_origin, platform_of

LIST_ROWS = 50
SHOWN_EXECUTIONS = 200
"""A job's page lists this many executions (the newest); its counts cover them all."""
MAX_FORM_FIELDS = 2000  # one checkbox per device or group, plus the other fields
DEFAULT_TEMPLATE = "health-check"
TARGET_TYPES = requests.TARGET_TYPES
STATUSES = tuple(s.value for s in ALL_STATUSES)
POLL_MS = 1500


@dataclass(slots=True)
class JobForm:
    """The new-job form's values as typed, and what was wrong with them."""

    job_name: str = ""
    template: str = DEFAULT_TEMPLATE
    parameters: dict[str, str] = field(default_factory=dict)
    target_type: str = "device"
    devices: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    timeout: str = ""
    per_minute: str = ""
    abort_type: str = ""
    abort_threshold: str = ""
    abort_min: str = ""
    retry_type: str = ""
    retries: str = ""
    problem: str = ""
    invalid: str = ""  # the id of the input the problem is about

    @classmethod
    def of(cls, fields: Mapping[str, list[str]]) -> JobForm:
        def one(name: str, default: str = "") -> str:
            values = fields.get(name)
            return values[-1].strip() if values else default

        template = one("template_id", DEFAULT_TEMPLATE)
        prefix = f"param.{template}."
        parameters = {
            name.removeprefix(prefix): values[-1]
            for name, values in fields.items()
            if name.startswith(prefix) and values
        }
        return cls(
            job_name=one("job_name"),
            template=template,
            parameters=parameters,
            target_type=one("target_type", "device"),
            devices=[v for v in fields.get("target_devices", []) if v],
            groups=[v for v in fields.get("target_groups", []) if v],
            timeout=one("timeout_seconds"),
            per_minute=one("maximum_per_minute"),
            abort_type=one("abort_failure_type"),
            abort_threshold=one("abort_threshold_percentage"),
            abort_min=one("abort_min_finished"),
            retry_type=one("retry_failure_type"),
            retries=one("number_of_retries"),
        )

    def body(self) -> dict[str, Any]:
        """The ``POST /api/v1/jobs/execute`` body this form stands for."""
        body: dict[str, Any] = {
            "job_name": self.job_name,
            "template_id": self.template,
            "parameters": {k: v for k, v in self.parameters.items() if v != ""},
            "target_type": self.target_type,
            "timeout_seconds": number(self.timeout),
            "maximum_per_minute": number(self.per_minute),
        }
        if self.target_type == "device":
            body["target_devices"] = self.devices
        elif self.target_type == "group":
            body["target_groups"] = self.groups
        if self.abort_type:
            body["abort_criteria"] = [
                {
                    "failure_type": self.abort_type,
                    "threshold_percentage": number(self.abort_threshold, real=True),
                    "min_finished": 1 if not self.abort_min else number(self.abort_min),
                }
            ]
        if self.retry_type:
            retries = 1 if not self.retries else number(self.retries)
            body["retries"] = [{"failure_type": self.retry_type, "number_of_retries": retries}]
        return {k: v for k, v in body.items() if v is not None}

    def blame(self, message: str) -> None:
        """Show ``message`` and mark the input it is about (the API names its fields)."""
        self.problem = message
        for prefix, input_id in FIELD_INPUTS:
            if message.startswith(prefix):
                self.invalid = input_id
                return
        for key in self.parameters:
            if message.startswith(f"parameter {key!r}"):
                self.invalid = f"param-{self.template}-{key}"
                return


FIELD_INPUTS = (
    ("job_name", "job_name"),
    ("template", "template_id"),
    ("unknown parameter", "template_id"),
    ("target_devices", "targets"),
    ("target_groups", "targets"),
    ("target_type", "targets"),
    ("timeout_seconds", "timeout_seconds"),
    ("maximum_per_minute", "maximum_per_minute"),
    ("abort_criteria[0].threshold", "abort_threshold_percentage"),
    ("abort_criteria[0].min_finished", "abort_min_finished"),
    ("abort_criteria", "abort_failure_type"),
    ("retries[0].number_of_retries", "number_of_retries"),
    ("retries", "retry_failure_type"),
)


def number(text: str, *, real: bool = False) -> Any:
    """A typed number as the API takes it: ``None`` when blank, the text itself when it is
    not a number (so the API's check names the field and the value)."""
    if not text:
        return None
    try:
        value = float(text) if real else int(text)
    except ValueError:
        return text
    return value


async def fields_of(request: Request) -> dict[str, list[str]]:
    """The posted form, with room for a checkbox per device of a large fleet."""
    body = (await read_body(request)).decode("utf-8", "replace")
    try:
        return parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError as exc:
        raise BadRequest(f"the form could not be read: {exc}") from exc


def operator(reader: Reader) -> None:
    if not reader.principal.is_admin:
        raise Forbidden("Only an organisation admin (operator) may see and run jobs.")


# ---------------------------------------------------------------- the list


@page
async def jobs_page(request: Request, reader: Reader) -> Response:
    operator(reader)
    store = platform_of(request).store
    organisation = reader.principal.organisation_id
    found = await store.read(repo.list_jobs(organisation, None, LIST_ROWS, None))
    if wants_json(request):  # the page's script, following jobs still in progress
        rows = [{k: job.to_json()[k] for k in ("job_id", "status", "counts")} for job in found]
        return json_response(request, {"jobs": rows})
    context = {
        "reader": reader,
        "section": "jobs",
        "title": "Jobs",
        "jobs": found,
        "shown_statuses": STATUSES,
        "now": now_ms(),
    }
    return render(request, "jobs.html", context)


# ---------------------------------------------------------------- the form


@dataclass(frozen=True, slots=True)
class Pickable:
    """A device in the target picker: does it have an agent that runs jobs?"""

    id: int
    name: str
    active: bool


ACTIVE_WINDOW_MS = 10 * 60 * 1000
STARTED = tuple(sorted(s.value for s in DEVICE_SETTABLE))  # only an agent moves these


def recently_started(organisation_id: int, since_ms: int) -> Work[set[int]]:
    """Devices whose agent started an execution since ``since_ms`` (ids grow with time,
    so only executions queued since then are looked at, through the status index)."""
    rows = yield Fetch(
        "SELECT DISTINCT device_id FROM job_executions "  # noqa: S608 - "?" placeholders only
        f"WHERE status IN ({placeholders(len(STARTED))}) AND id > ? "
        "AND organisation_id = ? AND started_ms >= ?",
        (*STARTED, lowest_id_at(since_ms), organisation_id, since_ms),
    )
    return {int(row[0]) for row in rows}


async def pickers(request: Request, organisation: int) -> tuple[list[Pickable], list[Group]]:
    """The organisation's devices, those with an active agent first: one long-polling
    for work right now (in this process) or one that started a job lately."""
    store = platform_of(request).store
    active = jobs_service(platform_of(request)).waiters.devices()
    active |= await store.read(recently_started(organisation, now_ms() - ACTIVE_WINDOW_MS))
    found = await store.read(fleet.list_devices(organisation))
    pickable = [Pickable(d.agent_id, d.name, d.agent_id in active) for d in found]
    pickable.sort(key=lambda d: (not d.active, d.name.lower(), d.id))
    return pickable, await store.read(fleet.list_groups(organisation))


def default_name(template: str) -> str:
    return f"{template} {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')}"


async def show_form(
    request: Request, reader: Reader, form: JobForm | None = None, *, status: int = 200
) -> Response:
    organisation = reader.principal.organisation_id
    store = platform_of(request).store
    templates = await store.read(repo.list_templates(organisation))
    devices, groups = await pickers(request, organisation)
    if form is None:
        form = fresh_form(request, templates, devices)
    context = {
        "reader": reader,
        "section": "jobs",
        "title": "New job",
        "form": form,
        "templates": templates,
        "chosen": chosen_template(templates, form.template),
        "devices": devices,
        "groups": groups,
        "target_types": TARGET_TYPES,
        "abort_types": tuple(ABORT_TYPES),
        "retry_types": tuple(RETRY_TYPES),
    }
    return render(request, "jobs_new.html", context, status=status)


def fresh_form(request: Request, templates: Sequence[Template], devices: list[Pickable]) -> JobForm:
    """The form as it first opens: ``?template=`` and ``?device=`` if given, else the
    health check on the devices with an active agent."""
    asked = request.query_params.get("template", DEFAULT_TEMPLATE)
    template = chosen_template(templates, asked) or templates[0]
    wanted = request.query_params.getlist("device")
    chosen = [str(d.id) for d in devices if (str(d.id) in wanted if wanted else d.active)]
    return JobForm(
        job_name=default_name(template.name), template=template_ref(template), devices=chosen
    )


def template_ref(template: Template) -> str:
    """How the form names a template: built-in ones by name, the organisation's by id."""
    return template.name if template.builtin else str(template.id)


def chosen_template(templates: Sequence[Template], ref: str) -> Template | None:
    for template in templates:
        if ref in (template.name, str(template.id)):
            return template
    return None


@page
async def new_job_page(request: Request, reader: Reader) -> Response:
    operator(reader)
    return await show_form(request, reader)


@page
async def create_job(request: Request, reader: Reader) -> Response:
    """Execute the form's job; a bad field brings the form back with the API's reason."""
    operator(reader)
    check_same_origin(request)
    form = JobForm.of(await fields_of(request))
    service = jobs_service(platform_of(request))
    try:
        job = await service.execute(reader.principal, requests.parse_execute(form.body()))
    except ApiError as exc:
        if exc.status in (401, 403):
            raise
        form.blame(exc.message)
        return await show_form(request, reader, form, status=exc.status)
    return RedirectResponse(f"/jobs/{job.id}", 303)


# ---------------------------------------------------------------- one job


def job_id_of(request: Request) -> int:
    raw = str(request.path_params["job_id"])
    job_id = id_in(raw)
    if job_id is None:
        raise NotFound(f"job {raw} does not exist")
    return job_id


async def job_and_executions(request: Request, reader: Reader) -> tuple[Job, list[Execution]]:
    store = platform_of(request).store
    organisation = reader.principal.organisation_id
    job = await store.read(repo.require_job(organisation, job_id_of(request)))
    query = ExecutionFilter(organisation, job_id=job.id, limit=SHOWN_EXECUTIONS)
    return job, await store.read(repo.list_executions(query))


def finished(job: Job, executions: Sequence[Execution]) -> bool:
    """Nothing more will change: the job ended and none of its executions still runs."""
    return job.status is not JobStatus.IN_PROGRESS and not any(
        e.status in ACTIVE for e in executions
    )


async def device_names(request: Request, organisation: int) -> dict[int, str]:
    found = await platform_of(request).store.read(fleet.list_devices(organisation))
    return {d.agent_id: d.name for d in found}


def target_names(job: Job, names: Mapping[int, str], groups: Sequence[Group]) -> list[str]:
    """The job's targets by name (a deleted device or group keeps its id)."""
    by_ref = {str(g.id): g.name for g in groups} | {g.name: g.name for g in groups}
    if job.target_type == "group":
        return [by_ref.get(t, t) for t in job.targets]
    return [names.get(id_in(t) or 0, t) for t in job.targets]


@page
async def job_page(request: Request, reader: Reader) -> Response:
    operator(reader)
    job, executions = await job_and_executions(request, reader)
    organisation = reader.principal.organisation_id
    template = None
    if job.template_id is not None:
        templates = await platform_of(request).store.read(repo.list_templates(organisation))
        template = next((t for t in templates if t.id == job.template_id), None)
    counts = job.to_json()["counts"]
    names = await device_names(request, organisation)
    groups = await platform_of(request).store.read(fleet.list_groups(organisation))
    context = {
        "reader": reader,
        "section": "jobs",
        "title": job.name,
        "job": job,
        "counts": counts,
        "template": template,
        "executions": executions,
        "names": names,
        "targets": target_names(job, names, groups),
        "statuses": STATUSES,
        "finished": finished(job, executions),
        "live": {"job_id": str(job.id), "poll_ms": POLL_MS},
        "now": now_ms(),
    }
    return render(request, "jobs_detail.html", context)


@page
async def job_progress(request: Request, reader: Reader) -> Response:
    """The job's counts and executions as JSON, for the page's script."""
    operator(reader)
    job, executions = await job_and_executions(request, reader)
    names = await device_names(request, reader.principal.organisation_id)
    shown = job.to_json()
    body = {
        "job": {k: shown[k] for k in ("job_id", "status", "reason", "counts", "completed_at")},
        "executions": [
            {**e.to_json(), "device_name": names.get(e.device_id, str(e.device_id))}
            for e in executions
        ],
        "finished": finished(job, executions),
    }
    return json_response(request, body)


@page
async def cancel_job(request: Request, reader: Reader) -> Response:
    """Cancel (QUEUED executions end) or force-cancel (running ones too)."""
    operator(reader)
    check_same_origin(request)
    fields = await fields_of(request)
    force = fields.get("force", [""])[-1] == "true"
    reason = requests.label(fields.get("reason", [""])[-1].strip(), "reason") or None
    service = jobs_service(platform_of(request))
    job = await service.cancel(reader.principal, job_id_of(request), force, reason)
    if wants_json(request):
        return json_response(request, job.to_json())
    return RedirectResponse(f"/jobs/{job.id}", 303)
