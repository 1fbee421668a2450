"""Batch writes: many messages (or aggregate patches) to many channels in one request.

Each item succeeds or fails on its own; the answer lists them in request order.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fleetcloud.api.auth import may_write
from fleetcloud.api.channels import caller, parse_ts
from fleetcloud.api.http import JSONResponse, is_digits, read_object
from fleetcloud.core.errors import ApiError, BadRequest, Forbidden
from fleetcloud.core.jsonish import to_id
from fleetcloud.core.merge import split_path
from fleetcloud.core.types import Principal
from fleetcloud.platform import Platform
from fleetcloud.store import channels as repo
from fleetcloud.store.channels import AggregateItem, PublishItem, PublishResult

MAX_ITEMS = 10_000


def items_of(body: dict[str, Any]) -> list[Any]:
    items = body.get("items")
    if not isinstance(items, list):
        raise BadRequest('the body must be {"items": [...]}')
    if len(items) > MAX_ITEMS:
        raise BadRequest(f"at most {MAX_ITEMS} items per request, not {len(items)}")
    return items


async def target_of(platform: Platform, principal: Principal, raw: Any) -> tuple[int, str]:
    """The (agent id, channel name) an item writes to, if the caller may write there."""
    if not isinstance(raw, dict):
        raise BadRequest("each item must be a JSON object")
    name = raw.get("channel_name")
    if not isinstance(name, str) or not name:
        raise BadRequest("channel_name must be a non-empty string")
    agent = await platform.auth.agent(principal, to_id(raw.get("agent_id"), "agent_id"))
    if not may_write(principal, agent):
        raise Forbidden(f"this token may not write to agent {agent.id}'s channels")
    return agent.id, name


def failure(raw: Any, exc: ApiError) -> PublishResult:
    fields = raw if isinstance(raw, dict) else {}
    agent_id, name = fields.get("agent_id"), fields.get("channel_name")
    return PublishResult(
        int(str(agent_id)) if is_digits(str(agent_id)) else None,
        name if isinstance(name, str) else None,
        error=exc.message,
        status=exc.status,
    )


def answer(results: list[PublishResult]) -> Response:
    items = []
    for r in results:
        item: dict[str, Any] = {
            "agent_id": None if r.agent_id is None else str(r.agent_id),
            "channel_name": r.channel_name,
            "success": r.success,
        }
        if r.message_id is not None:
            item["message_id"] = str(r.message_id)
        if r.error is not None:
            item["error"] = r.error
            item["status"] = r.status
        items.append(item)
    succeeded = sum(1 for r in results if r.success)
    return JSONResponse(
        {
            "items": items,
            "count": len(items),
            "succeeded": succeeded,
            "failed": len(items) - succeeded,
        }
    )


async def post_messages(request: Request) -> Response:
    platform, principal = await caller(request)
    raw_items = items_of(await read_object(request))
    results: list[PublishResult | None] = [None] * len(raw_items)
    valid: list[tuple[int, PublishItem]] = []
    for index, raw in enumerate(raw_items):
        try:
            agent_id, name = await target_of(platform, principal, raw)
            if "data" not in raw:
                raise BadRequest("data is missing")
            given = raw.get("message_id")
            item = PublishItem(
                agent_id,
                name,
                raw["data"],
                principal.agent_id,
                message_id=None if given is None else to_id(given, "message_id"),
                ts=parse_ts(raw.get("ts")),
            )
        except ApiError as exc:
            results[index] = failure(raw, exc)
        else:
            valid.append((index, item))
    if valid:
        written = await platform.store.publish([item for _, item in valid])
        for (index, _), result in zip(valid, written, strict=True):
            results[index] = result
        platform.metrics.messages_published.inc(sum(1 for r in written if r.success))
    return answer([r for r in results if r is not None])


async def patch_aggregates(request: Request) -> Response:
    platform, principal = await caller(request)
    raw_items = items_of(await read_object(request))
    results: list[PublishResult | None] = [None] * len(raw_items)
    valid: list[tuple[int, AggregateItem]] = []
    for index, raw in enumerate(raw_items):
        try:
            agent_id, name = await target_of(platform, principal, raw)
            if "data" not in raw:
                raise BadRequest("data is missing")
            replace = raw.get("replace")
            if replace is not None and not isinstance(replace, str):
                raise BadRequest("replace must be a dotted path string")
            if replace is not None:
                split_path(replace)  # a bad path fails this item, not the whole batch
            item = AggregateItem(agent_id, name, raw["data"], "merge", replace, principal.agent_id)
            valid.append((index, item))
        except ApiError as exc:
            results[index] = failure(raw, exc)
    if valid:
        written = await platform.store.write(repo.update_aggregates([i for _, i in valid]))
        for (index, _), result in zip(valid, written, strict=True):
            results[index] = result
    return answer([r for r in results if r is not None])
