"""The sign-in page, signing out, and ``/``."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from fleetcloud.core.errors import ApiError

from . import sessions
from .pages import first, form_fields, render


async def home(request: Request) -> Response:
    signed_in = await sessions.principal_of(request) is not None
    return RedirectResponse("/devices" if signed_in else "/signin", 303)


def form(
    request: Request, *, error: str | None = None, status: int = 200, next_path: str = ""
) -> Response:
    context = {
        "reader": None,
        "section": None,
        "title": "Sign in",
        "error": error,
        "next": sessions.safe_next(next_path or request.query_params.get("next")),
        "signed_out": request.query_params.get("signed_out") == "1",
    }
    return render(request, "signin.html", context, status=status)


async def signin_page(request: Request) -> Response:
    request.state.started = time.perf_counter()
    if await sessions.principal_of(request) is not None:
        return RedirectResponse(sessions.safe_next(request.query_params.get("next")), 303)
    return form(request)


async def signin(request: Request) -> Response:
    request.state.started = time.perf_counter()
    next_path = ""
    try:
        sessions.check_same_origin(request)
        fields = await form_fields(request)
        token, next_path = first(fields, "token"), first(fields, "next")
        session = await sessions.sign_in(sessions.platform_of(request), token)
    except ApiError as exc:
        return form(request, error=exc.message, status=exc.status, next_path=next_path)
    response = RedirectResponse(sessions.safe_next(next_path), 303)
    sessions.set_session_cookie(response, request, session)
    return response


async def signout(request: Request) -> Response:
    sessions.check_same_origin(request)
    await sessions.sign_out(sessions.platform_of(request), sessions.session_of(request))
    response = RedirectResponse("/signin?signed_out=1", 303)
    sessions.clear_session_cookie(response, request)
    return response
