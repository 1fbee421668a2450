"""Rendering console pages: the template environment, the navigation, the headers every
page carries, and the ``page`` wrapper that signs the reader in and times the render."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleetcloud import __version__
from fleetcloud.api.http import JSONResponse, read_body
from fleetcloud.core.errors import ApiError, BadRequest
from fleetcloud.core.types import Principal
from fleetcloud.store import agents

from . import readings, sessions


@dataclass(frozen=True, slots=True)
class Section:
    key: str
    label: str
    path: str


NAV: list[Section] = [
    Section("devices", "Devices", "/devices"),
    Section("apps", "Apps", "/apps"),
    Section("commands", "Commands", "/commands"),
    Section("jobs", "Jobs", "/jobs"),
]
"""The console's top-level pages, in menu order; a new page adds its ``Section`` here."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def static(path: str) -> str:
    return f"/console/static/{path}?v={__version__}"


def iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def utc(ms: int | None) -> str:
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(ms: int | None, now_ms: int | None = None) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago``; ``never`` for None."""
    if ms is None:
        return "never"
    seconds = max(0, ((now_ms if now_ms is not None else agents.now_ms()) - ms) // 1000)
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("fleetcloud.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENVIRONMENT.globals.update(static=static, nav=NAV, version=__version__)
ENVIRONMENT.filters.update(
    iso=iso, utc=utc, ago=ago, pretty=readings.pretty, compact=readings.compact
)


def started(request: Request) -> float:
    value = getattr(request.state, "started", None)
    return value if isinstance(value, float) else time.perf_counter()


def timing(request: Request) -> dict[str, str]:
    """The ``Server-Timing`` header: how long the server took, data reads included."""
    elapsed = (time.perf_counter() - started(request)) * 1000
    return {"Server-Timing": f"render;dur={elapsed:.1f}"}


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    html = ENVIRONMENT.get_template(template).render(request=request, **context)
    return HTMLResponse(
        html, status, headers={**SECURITY_HEADERS, **(headers or {}), **timing(request)}
    )


def json_response(request: Request, body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status, headers={**SECURITY_HEADERS, **timing(request)})


async def form_fields(request: Request) -> dict[str, list[str]]:
    """An URL-encoded form body (bounded like every API body), as ``{name: [values]}``."""
    body = (await read_body(request)).decode("utf-8", "replace")
    try:
        return parse_qs(body, keep_blank_values=True, max_num_fields=32)
    except ValueError as exc:
        raise BadRequest(f"the form could not be read: {exc}") from exc


def first(fields: Mapping[str, list[str]], name: str) -> str:
    values = fields.get(name)
    return values[0] if values else ""


def wants_json(request: Request) -> bool:
    """Is this the page's script (JSON in or out) rather than the browser itself?"""
    accept = request.headers.get("accept", "")
    return "application/json" in accept or request.headers.get("content-type", "").startswith(
        "application/json"
    )


@dataclass(frozen=True, slots=True)
class Reader:
    """The signed-in reader of a page."""

    principal: Principal
    organisation: str

    @property
    def role(self) -> str:
        return self.principal.role.value


Handler = Callable[[Request, Reader], Awaitable[Response]]


async def reader_of(request: Request) -> Reader | None:
    principal = await sessions.principal_of(request)
    if principal is None:
        return None
    store = sessions.platform_of(request).store
    organisation = await store.read(agents.get_organisation(principal.organisation_id))
    name = organisation.name if organisation else str(principal.organisation_id)
    return Reader(principal, name)


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A console endpoint: sends a reader who is not signed in to the sign-in page (or
    answers 401 to a script), and shows an API error as a page (or as JSON)."""

    async def endpoint(request: Request) -> Response:
        request.state.started = time.perf_counter()
        reader = await reader_of(request)
        if reader is None:
            if wants_json(request):
                body = {"error": "Unauthorized", "message": "Sign in again.", "status": 401}
                return json_response(request, body, 401)
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.method != "GET":  # a form posted after the session ended: its page
                target = urlsplit(request.headers.get("referer", "")).path or "/devices"
            return RedirectResponse(f"/signin?next={quote(target, safe='')}", 303)
        try:
            return await handler(request, reader)
        except ApiError as exc:
            if wants_json(request):
                return json_response(request, exc.to_json(), exc.status)
            context = {"reader": reader, "section": None, "error": exc, "title": "Error"}
            return render(request, "error.html", context, status=exc.status)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint
