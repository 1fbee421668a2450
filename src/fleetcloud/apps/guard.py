"""The invoking-channel rule, enforced by the server for invocation tokens.

An app may not write to the channel whose message or aggregate change invoked it — that
write would invoke it again, forever. The SDK refuses such writes itself; the server
refuses them too, because an app's code may talk to the data API however it likes.

Each invocation token records what invoked it in its ``label`` (JSON: ``{"installation",
"app_key", "invoked_by": {"agent_id", "channel"}}``). ``check_request`` — registered in
``fleetcloud.api.auth.ROLE_GUARDS`` for ``APP_INVOCATION`` tokens — looks at every write
such a token makes (one channel's messages or aggregate, or a batch) and refuses with 403
what targets the invoking channel, except the app's own namespace in a reserved channel,
as the SDK allows: its key in ``tag_values``, its child in ``ui_state``
(``state.children.<app_key>``) and its ``<app_key>_…`` keys in ``ui_cmds``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection, Request

from fleetcloud.api.channels import parse_target, raw_tail
from fleetcloud.api.http import gunzip
from fleetcloud.core import jsonish
from fleetcloud.core.errors import BadRequest, Forbidden, PayloadTooLarge
from fleetcloud.core.types import Principal
from fleetcloud.platform import Platform
from fleetcloud.sdk.data import TAG_CHANNEL, UI_CMDS_CHANNEL, UI_STATE_CHANNEL, WriteGuard
from fleetcloud.store.agents import hash_token
from fleetcloud.store.ops import Fetch, Work

READS = frozenset({"GET", "HEAD", "OPTIONS"})
CACHE_LIMIT = 100_000
CACHE_SECONDS = 300.0


@dataclass(frozen=True)
class InvokedBy:
    """The channel that invoked an installation, and the app's key (its namespace)."""

    agent_id: int
    channel: str
    app_key: str

    def own_write(self, data: Any, replace: str | None = None) -> bool:
        """Whether writing ``data`` (with ``replace``) stays in the app's own namespace."""
        guard = WriteGuard(self.agent_id, self.channel, self.app_key)
        return guard.own_namespace(self.channel, data) and self.own_path(replace)

    def own_path(self, replace: str | None) -> bool:
        if replace is None:
            return True
        own = {
            TAG_CHANNEL: self.app_key,
            UI_STATE_CHANNEL: f"state.children.{self.app_key}",
        }.get(self.channel)
        if own is not None:
            return replace == own or replace.startswith(own + ".")
        return self.channel == UI_CMDS_CHANNEL and replace.startswith(f"{self.app_key}_")

    def refusal(self) -> Forbidden:
        return Forbidden(
            f"this invocation was triggered by channel {self.channel!r} of agent "
            f"{self.agent_id}, so the app may not write to it (that would invoke it again, "
            f"in a loop); only the app's own key {self.app_key!r} in tag_values (and its "
            "own ui_state / ui_cmds entries) may be written"
        )


def token_label(installation_id: int, app_key: str, invoked_by: InvokedBy | None) -> str:
    label: dict[str, Any] = {"installation": str(installation_id), "app_key": app_key}
    if invoked_by is not None:
        label["invoked_by"] = {"agent_id": str(invoked_by.agent_id), "channel": invoked_by.channel}
    return jsonish.dumps_str(label)


def from_label(label: str | None) -> InvokedBy | None:
    try:
        data = jsonish.loads(label) if label else None
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("invoked_by"), dict):
        return None
    source = data["invoked_by"]
    return InvokedBy(int(source["agent_id"]), str(source["channel"]), str(data["app_key"]))


def _label(token: str) -> Work[str | None]:
    rows = yield Fetch("SELECT label FROM tokens WHERE hash = ?", (hash_token(token),))
    return str(rows[0][0]) if rows and rows[0][0] is not None else None


class Rules:
    """What invoked each invocation token: remembered when minted in this process, else
    read from the token's record (and then remembered for a while)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[InvokedBy | None, float]] = {}

    def remember(self, token: str, invoked_by: InvokedBy | None) -> None:
        if len(self._known) > CACHE_LIMIT:
            self._known.clear()
        self._known[token] = (invoked_by, time.monotonic() + CACHE_SECONDS)

    async def lookup(self, platform: Platform, token: str) -> InvokedBy | None:
        known = self._known.get(token)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        invoked_by = from_label(await platform.store.read(_label(token)))
        self.remember(token, invoked_by)
        return invoked_by


RULES = Rules()


async def check_request(conn: HTTPConnection, principal: Principal, token: str) -> None:
    """Refuse an invocation token's write to the channel that invoked it (see above)."""
    if conn.scope["type"] != "http" or conn.scope.get("method", "GET") in READS:
        return
    if not isinstance(conn, Request) or not conn.url.path.startswith("/api/agents/"):
        return
    platform: Platform = conn.app.state.platform
    invoked_by = await RULES.lookup(platform, token)
    if invoked_by is None:
        return
    path = conn.url.path
    if path in ("/api/agents/messages", "/api/agents/aggregates"):
        await _check_batch(conn, platform, invoked_by)
    elif "/channels/" in path:
        await _check_channel(conn, platform, invoked_by)


async def _check_channel(request: Request, platform: Platform, invoked_by: InvokedBy) -> None:
    agent_id = request.path_params.get("agent_id")
    if str(agent_id) != str(invoked_by.agent_id):
        return
    try:
        target = parse_target(raw_tail(request))
    except BadRequest:
        return  # the handler answers that
    if target.name != invoked_by.channel:
        return
    own_kind = (target.part, request.method) in (("messages", "POST"), ("aggregate", "PATCH"))
    if not own_kind or invoked_by.channel not in (TAG_CHANNEL, UI_STATE_CHANNEL, UI_CMDS_CHANNEL):
        raise invoked_by.refusal()
    body = await _body(request, platform)
    if target.part == "messages":
        data = body.get("data") if isinstance(body, dict) else None
        allowed = invoked_by.own_write(data)
    else:
        allowed = invoked_by.own_write(body, request.query_params.get("replace") or None)
    if not allowed:
        raise invoked_by.refusal()


async def _check_batch(request: Request, platform: Platform, invoked_by: InvokedBy) -> None:
    body = await _body(request, platform)
    items = body.get("items") if isinstance(body, dict) else None
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        same_agent = str(item.get("agent_id")) == str(invoked_by.agent_id)
        if not same_agent or item.get("channel_name") != invoked_by.channel:
            continue
        replace = item.get("replace")
        if not invoked_by.own_write(
            item.get("data"), replace if isinstance(replace, str) else None
        ):
            raise invoked_by.refusal()


async def _body(request: Request, platform: Platform) -> Any:
    """The request's JSON body, read once (Starlette keeps it for the handler)."""
    limit = platform.settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        raise BadRequest("an app's write must send Content-Length")
    if int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    raw = await request.body()
    if request.headers.get("content-encoding", "").strip().lower() == "gzip" and raw:
        raw = gunzip(raw, limit)
    try:
        return jsonish.loads(raw) if raw else None
    except ValueError:
        return None  # the handler refuses it with its own message
