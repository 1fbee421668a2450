"""The data API: channels, messages, aggregates (Doover's paths and JSON shapes).

Channel names may contain ``/``, so everything under ``/api/agents/{id}/channels/`` is
routed here and split by its tail: ``…/aggregate``, ``…/messages``,
``…/messages/timeseries`` and ``…/messages/{id}`` address a channel's parts, anything
else is the channel itself. A channel whose own name ends in one of those words is
reached with its slashes escaped as ``%2F``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from fleetcloud.api.auth import may_read, require_read, require_write
from fleetcloud.api.http import JSONResponse, is_digits, query_int, read_json, read_object
from fleetcloud.core.errors import ApiError, BadRequest, ValidationFailed
from fleetcloud.core.ids import EPOCH_MS, lowest_id_at
from fleetcloud.core.jsonish import to_id
from fleetcloud.core.merge import pick
from fleetcloud.core.schemas import check_schema
from fleetcloud.core.types import Agent, Channel, Message, Principal
from fleetcloud.platform import Platform
from fleetcloud.store import channels as repo
from fleetcloud.store.channels import (
    AggregateItem,
    PublishItem,
    PublishResult,
    aggregate_json,
    channel_json,
    message_json,
)

MAX_PAGE = 1000
MAX_TS_MS = 2**41 + EPOCH_MS


def platform_of(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


@dataclass(frozen=True)
class Target:
    """What a path under ``/channels/`` names: a channel and which part of it."""

    name: str
    part: str  # "channel" | "aggregate" | "messages" | "timeseries" | "message"
    message_id: int | None = None


def parse_target(raw_tail: str) -> Target:
    segments = raw_tail.split("/")
    part, message_id = "channel", None
    if len(segments) > 1 and segments[-1] == "aggregate":
        part, segments = "aggregate", segments[:-1]
    elif len(segments) > 1 and segments[-1] == "messages":
        part, segments = "messages", segments[:-1]
    elif len(segments) > 2 and segments[-2] == "messages" and segments[-1] == "timeseries":
        part, segments = "timeseries", segments[:-2]
    elif len(segments) > 2 and segments[-2] == "messages" and is_digits(segments[-1]):
        part, message_id = "message", to_id(segments[-1], "message id")
        segments = segments[:-2]
    name = "/".join(unquote(segment) for segment in segments)
    if not name or any(not segment for segment in segments):
        raise BadRequest(f"{raw_tail!r} is not a valid channel path")
    return Target(name, part, message_id)


def raw_tail(request: Request) -> str:
    """The still-escaped path after ``/channels/`` (so ``%2F`` stays part of a name)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    _, _, tail = path.partition("/channels/")
    return tail


async def caller(request: Request) -> tuple[Platform, Principal]:
    platform = platform_of(request)
    return platform, await platform.auth.authenticate(request)


async def readable_channel(
    platform: Platform, principal: Principal, agent: Agent, name: str
) -> Channel:
    channel = await platform.store.read(repo.require_channel(agent.id, name))
    require_read(principal, agent, channel)
    return channel


# ---------------------------------------------------------------- handlers


async def list_channels(request: Request) -> Response:
    platform, principal = await caller(request)
    agent = await platform.auth.agent(principal, to_id(request.path_params["agent_id"], "agent"))
    with_aggregate = request.query_params.get("include_aggregate", "true").lower() != "false"
    found = await platform.store.read(repo.list_channels(agent.id))
    visible = [c for c in found if may_read(principal, agent, c)]
    return JSONResponse([channel_json(c, with_aggregate=with_aggregate) for c in visible])


async def channel_path(request: Request) -> Response:
    """Every method on every path under ``/api/agents/{agent_id}/channels/``."""
    platform, principal = await caller(request)
    agent = await platform.auth.agent(principal, to_id(request.path_params["agent_id"], "agent"))
    target = parse_target(raw_tail(request))
    handler = HANDLERS.get((target.part, request.method))
    if handler is None:
        allowed = ", ".join(method for part, method in HANDLERS if part == target.part)
        where = "a channel" if target.part == "channel" else f"a channel's {target.part}"
        raise HTTPException(
            405, f"{request.method} is not supported on {where}; use {allowed}", {"Allow": allowed}
        )
    return await handler(request, platform, principal, agent, target)


Handler = Callable[[Request, Platform, Principal, Agent, Target], Awaitable[Response]]


async def get_channel(
    request: Request, platform: Platform, principal: Principal, agent: Agent, target: Target
) -> Response:
    channel = await readable_channel(platform, principal, agent, target.name)
    return JSONResponse(channel_json(channel))


async def put_channel(
    request: Request, platform: Platform, principal: Principal, agent: Agent, target: Target
) -> Response:
    """POST creates the channel if it is missing; PUT also updates its settings."""
    require_write(principal, agent)
    body = await read_object(request, optional=True)
    is_private = body.get("is_private")
    if is_private is not None and not isinstance(is_private, bool):
        raise BadRequest("is_private must be true or false")
    for key in ("message_schema", "aggregate_schema"):
        if body.get(key) is not None:
            check_schema(body[key])
    channel, created = await platform.store.write(
        repo.put_channel(
            agent.id,
            target.name,
            is_private=is_private,
            message_schema=body.get("message_schema"),
            aggregate_schema=body.get("aggregate_schema"),
        )
    )
    return JSONResponse(channel_json(channel), status_code=201 if created else 200)


def parse_ts(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"ts must be a Unix time in milliseconds, not {value!r}")
    if not EPOCH_MS <= value < MAX_TS_MS:
        raise BadRequest(f"ts must be a Unix time in milliseconds since 2020, not {value!r}")
    return int(value)


async def post_message(
    request: Request, platform: Platform, principal: Principal, agent: Agent, target: Target
) -> Response:
    require_write(principal, agent)
    body = await read_object(request)
    if "data" not in body:
        raise BadRequest('a message is {"data": …, "ts"?: milliseconds}; "data" is missing')
    message_id = body.get("message_id")
    item = PublishItem(
        agent.id,
        target.name,
        body["data"],
        principal.agent_id,
        message_id=None if message_id is None else to_id(message_id, "message_id"),
        ts=parse_ts(body.get("ts")),
    )
    [result] = await platform.store.publish([item])
    if result.message_id is None:
        raise result_error(result)
    platform.metrics.messages_published.inc()
    message = Message(result.message_id, 0, agent.id, target.name, principal.agent_id, item.data)
    return JSONResponse(message_json(message))


def id_bound(request: Request, name: str) -> int | None:
    """``before``/``after`` as a snowflake id, or as a time in ms (``before_ms``…)."""
    as_id = query_int(request, name)
    as_ms = query_int(request, f"{name}_ms")
    if as_ms is not None:
        return lowest_id_at(as_ms)
    return as_id


def trim(data: Any, fields: list[str]) -> Any:
    if not fields or not isinstance(data, dict):
        return data
    return {name: pick(data, name) for name in fields}


async def list_messages(
    request: Request, platform: Platform, principal: Principal, agent: Agent, target: Target
) -> Response:
    channel = await readable_channel(platform, principal, agent, target.name)
    limit = query_int(request, "limit", 50, low=1, high=MAX_PAGE) or 50
    fields = request.query_params.getlist("field_name")
    found = await platform.store.read(
        repo.list_messages(
            channel,
            before=id_bound(request, "before"),
            after=id_bound(request, "after"),
            limit=limit,
        )
    )
    body = []
    for message in found:
        shaped = message_json(message)
        shaped["data"] = trim(message.data, fields)
        body.append(shaped)
    return JSONResponse(body)


async def timeseries(
    request: Request, platform: Platform, principal: Principal, agent: Agent, target: Target
) -> Response:
    channel = await readable_channel(platform, principal, agent, target.name)
    fields = request.query_params.getlist("field_name")
    if not fields:
        raise BadRequest("name at least one field: ?field_name=temperature&field_name=…")
    limit = query_int(request, "limit", 500, low=1, high=10 * MAX_PAGE) or 500
    found = await platform.store.read(
        repo.list_messages(
            channel,
            before=id_bound(request, "before"),
            after=id_bound(request, "after"),
            limit=limit,
        )
    )
    found.reverse()  # oldest first, as a chart wants
    shaped = [message_json(m) for m in found]
    return JSONResponse(
        {
            "timestamps": [m["timestamp"] for m in shaped],
            "values": {name: [pick(m["data"], name) for m in shaped] for name in fields},
        }
    )


async def get_message(
    request: Request, platform: Platform, principal: Principal, agent: Agent, target: Target
) -> Response:
    channel = await readable_channel(platform, principal, agent, target.name)
    assert target.message_id is not None
    message = await platform.store.read(repo.get_message(channel, target.message_id))
    return JSONResponse(message_json(message))


async def edit_message(
    request: Request, platform: Platform, principal: Principal, agent: Agent, target: Target
) -> Response:
    require_write(principal, agent)
    channel = await readable_channel(platform, principal, agent, target.name)
    body = await read_object(request)
    data = body.get("data", body)
    assert target.message_id is not None
    message = await platform.store.write(
        repo.edit_message(channel, target.message_id, data, merge=request.method == "PATCH")
    )
    return JSONResponse(message_json(message))


async def delete_message(
    request: Request, platform: Platform, principal: Principal, agent: Agent, target: Target
) -> Response:
    require_write(principal, agent)
    channel = await readable_channel(platform, principal, agent, target.name)
    assert target.message_id is not None
    await platform.store.write(repo.delete_message(channel, target.message_id))
    return Response(status_code=204)


async def get_aggregate(
    request: Request, platform: Platform, principal: Principal, agent: Agent, target: Target
) -> Response:
    channel = await readable_channel(platform, principal, agent, target.name)
    return JSONResponse(aggregate_json(channel))


async def update_aggregate(
    request: Request, platform: Platform, principal: Principal, agent: Agent, target: Target
) -> Response:
    require_write(principal, agent)
    data = await read_json(request)
    replace = request.query_params.get("replace") or None
    item = AggregateItem(
        agent.id,
        target.name,
        data,
        "replace" if request.method == "PUT" else "merge",
        replace,
        author_id=principal.agent_id,
    )
    [result] = await platform.store.write(repo.update_aggregates([item]))
    if not result.success:
        raise result_error(result)
    channel = await platform.store.read(repo.require_channel(agent.id, target.name))
    return JSONResponse(aggregate_json(channel))


HANDLERS: dict[tuple[str, str], Handler] = {
    ("channel", "GET"): get_channel,
    ("channel", "POST"): put_channel,
    ("channel", "PUT"): put_channel,
    ("messages", "GET"): list_messages,
    ("messages", "POST"): post_message,
    ("timeseries", "GET"): timeseries,
    ("message", "GET"): get_message,
    ("message", "PATCH"): edit_message,
    ("message", "PUT"): edit_message,
    ("message", "DELETE"): delete_message,
    ("aggregate", "GET"): get_aggregate,
    ("aggregate", "PATCH"): update_aggregate,
    ("aggregate", "PUT"): update_aggregate,
}


def result_error(result: PublishResult) -> ApiError:
    message = result.error or "the write was refused"
    return ValidationFailed(message) if result.status == 422 else BadRequest(message)
