"""Signing in to the console, and who is signed in.

- Signing in checks the typed token (``platform.auth``) and mints a **session token** for
  the same agent, organisation, role and scopes, labelled ``console`` and expiring after
  ``SESSION_SECONDS``. Only that session token goes into the cookie: the typed token is
  never stored by the browser. Signing out deletes the session token and the cookie, and
  the console refuses that session at once (the data API, which trusts a checked token
  for ``token_cache_seconds``, may take that long to notice); revoking the agent's
  tokens ends its console sessions too. App-invocation tokens
  (short-lived, for one app run) cannot sign in.
- The cookie is ``HttpOnly`` (page scripts cannot read it), ``SameSite=Strict`` (other
  sites cannot make the browser send it), ``Path=/``, and ``Secure`` when the console is
  reached over HTTPS.
- Page scripts never hold a token: they talk to same-origin console endpoints that read
  the cookie, and to the live websocket ``/console/live``, which identifies with the
  cookie's session instead of a token in the ``IDENTIFY`` frame.
- Every state-changing request (forms, the websocket handshake) must come from the
  console's own origin: an ``Origin`` (or ``Sec-Fetch-Site``) from elsewhere is refused.
- Org scoping is the server's: every page reads data through the session's principal,
  with the data API's own rules (``platform.auth``, ``may_read``, ``may_write``).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import Response

from fleetcloud.core.errors import Forbidden, Unauthorized
from fleetcloud.core.types import Principal, Role
from fleetcloud.platform import Platform
from fleetcloud.store import agents
from fleetcloud.store.agents import now_ms

from . import queries

COOKIE = "fleetcloud_console"
SESSION_SECONDS = 8 * 60 * 60
MAX_TOKEN_LENGTH = 512


def platform_of(conn: HTTPConnection) -> Platform:
    platform: Platform = conn.app.state.platform
    return platform


async def sign_in(platform: Platform, token: str) -> str:
    """A new session token for whoever ``token`` speaks for (401/403 if it may not)."""
    token = token.strip()
    if not token:
        raise Unauthorized("Enter a token to sign in.")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("That token was not accepted: it is unknown, revoked or expired.")
    try:
        principal = await platform.auth.principal(token)
    except Unauthorized:
        raise Unauthorized(
            "That token was not accepted: it is unknown, revoked or expired."
        ) from None
    if principal.role is Role.APP_INVOCATION:
        raise Forbidden("App invocation tokens cannot sign in to the console.")
    await platform.store.write(queries.purge_sessions(now_ms()))
    return await platform.store.write(
        agents.create_token(principal, label=queries.SESSION_LABEL, ttl_seconds=SESSION_SECONDS)
    )


ENDED: dict[str, float] = {}
"""Sessions signed out in this process, until the token cache has surely forgotten them
(``platform.auth`` trusts a checked token for ``token_cache_seconds``)."""


async def sign_out(platform: Platform, session: str | None) -> None:
    if session:
        await platform.store.write(queries.end_session(session))
        now = time.monotonic()
        for ended in [s for s, until in ENDED.items() if until < now]:
            del ENDED[ended]
        ENDED[session] = now + platform.settings.token_cache_seconds + 1


def session_of(conn: HTTPConnection) -> str | None:
    token = conn.cookies.get(COOKIE)
    return token if token and len(token) <= MAX_TOKEN_LENGTH else None


async def principal_of(conn: HTTPConnection) -> Principal | None:
    """Who is signed in, or None (no cookie, or its session ended or expired)."""
    session = session_of(conn)
    if session is None or session in ENDED:
        return None
    try:
        return await platform_of(conn).auth.principal(session)
    except Unauthorized:
        return None


def is_https(conn: HTTPConnection) -> bool:
    forwarded = conn.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return conn.url.scheme in ("https", "wss") or forwarded == "https"


def set_session_cookie(response: Response, conn: HTTPConnection, session: str) -> None:
    response.set_cookie(
        COOKIE,
        session,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(conn),
    )


def clear_session_cookie(response: Response, conn: HTTPConnection) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=is_https(conn)
    )


def check_same_origin(conn: HTTPConnection) -> None:
    """Refuse a request a page on another origin made (cross-site request forgery)."""
    origin = conn.headers.get("origin")
    if origin is not None:
        if urlsplit(origin).netloc.lower() != conn.headers.get("host", "").lower():
            raise Forbidden("This request came from another site and was refused.")
        return
    fetch_site = conn.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise Forbidden("This request came from another site and was refused.")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site, never another site."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/devices"
    return target
